"""Reassembly of concatenated MO SMS parts (pure; the caller passes the clock).

Parts are keyed by (sender, reference, total); they may come in any order and
twice (a repeated part keeps the first copy). A message whose parts are all in
is returned at once; one still incomplete `timeout` seconds after its first
part is returned by `expire()` with what arrived, marked incomplete. At most
`max_pending` messages wait: beyond that the oldest is flushed incomplete.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Assembled:
    sender: str
    text: str
    received_at: datetime | None
    parts: int
    missing: tuple[int, ...]

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(slots=True)
class _Partial:
    first_seen: float
    received_at: datetime | None
    total: int
    texts: dict[int, str] = field(default_factory=dict)


class Reassembler:
    def __init__(self, *, timeout: float = 120.0, max_pending: int = 1000) -> None:
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending: OrderedDict[tuple[str, int, int], _Partial] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def add(
        self,
        *,
        sender: str,
        reference: int,
        total: int,
        sequence: int,
        text: str,
        received_at: datetime | None,
        now: float,
    ) -> list[Assembled]:
        """Add one part; returns the messages it completes (or pushes out)."""
        out: list[Assembled] = []
        key = (sender, reference, total)
        partial = self._pending.get(key)
        if partial is None:
            if len(self._pending) >= self._max_pending:
                old_key, oldest = self._pending.popitem(last=False)
                out.append(self._assemble(old_key[0], oldest))
            partial = _Partial(first_seen=now, received_at=received_at, total=total)
            self._pending[key] = partial
        partial.texts.setdefault(sequence, text)
        if received_at is not None and (
            partial.received_at is None or received_at < partial.received_at
        ):
            partial.received_at = received_at
        if len(partial.texts) == total:
            del self._pending[key]
            out.append(self._assemble(sender, partial))
        return out

    def expire(self, now: float) -> list[Assembled]:
        out: list[Assembled] = []
        for key in [k for k, p in self._pending.items() if now - p.first_seen >= self._timeout]:
            out.append(self._assemble(key[0], self._pending.pop(key)))
        return out

    @staticmethod
    def _assemble(sender: str, partial: _Partial) -> Assembled:
        missing = tuple(i for i in range(1, partial.total + 1) if i not in partial.texts)
        text = "".join(partial.texts[i] for i in sorted(partial.texts))
        return Assembled(sender, text, partial.received_at, partial.total, missing)

