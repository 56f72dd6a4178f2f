"""Reports across channels, computed from the history store (one source of truth)."""
