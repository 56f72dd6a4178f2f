"""Fixtures for this peer (filled in by its owner)."""
