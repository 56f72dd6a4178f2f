"""Reading what the hub queued for one subscription (functional tests)."""

from __future__ import annotations

import json
from typing import Any

from cti.hub import Subscription


def screen_pops(sub: Subscription) -> list[dict[str, Any]]:
    """The ``screen_pop`` frames queued for ``sub`` so far (others are dropped)."""
    out = []
    while not sub.queue.empty():
        msg = json.loads(sub.queue.get_nowait())
        if msg["type"] == "screen_pop":
            out.append(msg)
    return out
