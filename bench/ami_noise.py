"""Noise filtering on the lab PBX: AMI events per answered queue call with and without
the manager.conf eventfilter (and the read classes) of asterisk-conf/.

    .venv/bin/python -m bench.ami_noise

Runs the same answered queue call (SIPp customer -> support -> SIPp agent1
answers, talks 4 s) on two private lab PBXs: one with the CTI AMI user as
shipped (read classes without `dialplan`, eventfilter !VarSet !Newexten), one
with `dialplan` granted and no eventfilter. Prints the event counts, the cut,
and checks that PbxTracker produces the same changes from both streams.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.ami_capture import raw_ami_capture
from cti.lab import AMI_READ, LabPbx
from pbx import events as ev
from pbx.framing import AmiParser
from pbx.state import PbxTracker
from tests.peers.sipp import agent_answering, caller_call


class UnfilteredLabPbx(LabPbx):
    def render(self) -> None:
        super().render()
        conf = self.etc_dir / "manager.conf"
        lines = conf.read_text().splitlines()
        conf.write_text("\n".join(x for x in lines if not x.startswith("eventfilter")) + "\n")


def one_call(pbx: LabPbx, work: Path) -> bytes:
    pbx.start()
    try:
        with raw_ami_capture(pbx) as chunks:
            agent = agent_answering(pbx, work, "agent1", ring=1.0)
            time.sleep(1.0)
            caller = caller_call(pbx, work, caller_number="+79161234567", hangup_after=4)
            caller.wait(60)
            agent.wait(60)
            time.sleep(1.0)
    finally:
        pbx.stop()
    return b"".join(chunks)


def call_events(data: bytes) -> tuple[Counter[str], list[str]]:
    """Events of the call (from the first Newchannel on) and the tracker's changes."""
    msgs = [m for m in AmiParser().messages(data) if m.event]
    first = next(i for i, m in enumerate(msgs) if m.event == "Newchannel")
    msgs = msgs[first:]
    tracker = PbxTracker("n")
    changes: list[str] = []
    for m in msgs:
        e = ev.decode_event(m)
        if e is not None:
            changes += [type(c).__name__ for c in tracker.apply(e, ev.event_time(m, 0.0))]
    return Counter(m.event or "" for m in msgs), changes


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ami-noise-") as tmp:
        base = Path(tmp)
        shipped = one_call(LabPbx(base / "a"), base / "sa")
        raw = one_call(UnfilteredLabPbx(base / "b", ami_read=AMI_READ + ",dialplan"), base / "sb")
    kept, kept_changes = call_events(shipped)
    full, full_changes = call_events(raw)
    n_kept, n_full = sum(kept.values()), sum(full.values())
    print(f"events per answered queue call: {n_full} unfiltered, {n_kept} with the shipped "
          f"user: cut {100 * (1 - n_kept / n_full):.0f}%")
    for name, count in full.most_common(6):
        print(f"  {name:<22} {count:>4} unfiltered, {kept.get(name, 0):>4} shipped")
    # Agent device-state events race the queue events inside Asterisk, so compare
    # the call changes in order and the member changes as a multiset.
    def calls(c: list[str]) -> list[str]:
        return [x for x in c if x != "QueueMemberChanged"]

    same = calls(kept_changes) == calls(full_changes) and Counter(kept_changes) == Counter(
        full_changes)
    print(f"changes produced by PbxTracker identical: {same} ({len(kept_changes)} changes)")
    if not same:
        print("  shipped:   ", kept_changes)
        print("  unfiltered:", full_changes)


if __name__ == "__main__":
    main()
