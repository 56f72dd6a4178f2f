"""The estimated wait announced to callers (docs/ivr.md)."""

from __future__ import annotations

from ivr.flows import IvrConfig, estimate_wait
from ivr.ports import QueueStats

CONFIG = IvrConfig(default_aht=180.0, min_wait=30.0, max_wait=3600.0)


def stats(waiting: int = 0, available: int = 0, logged_in: int = 0,
          aht: float | None = None) -> QueueStats:
    return QueueStats("support", waiting, available, logged_in, aht)


def test_no_agent_logged_in_means_no_estimate() -> None:
    assert estimate_wait(stats(waiting=5), 6, CONFIG) is None


def test_free_agent_for_this_position_means_no_wait() -> None:
    assert estimate_wait(stats(available=2, logged_in=3, aht=100), 2, CONFIG) == 0


def test_position_times_aht_over_busy_agents_rounded_up_to_minutes() -> None:
    # 3 × 120 s / 2 agents = 180 s
    assert estimate_wait(stats(waiting=2, logged_in=2, aht=120), 3, CONFIG) == 180
    # 2 × 100 / 1 = 200 s -> 4 minutes
    assert estimate_wait(stats(waiting=1, logged_in=1, aht=100), 2, CONFIG) == 240


def test_default_aht_without_data_and_bounds() -> None:
    assert estimate_wait(stats(logged_in=1), 1, CONFIG) == 180
    assert estimate_wait(stats(logged_in=10, aht=5), 1, CONFIG) == 60  # min 30 s -> 1 min
    assert estimate_wait(stats(logged_in=1, aht=600), 100, CONFIG) == 3600
