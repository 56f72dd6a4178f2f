"""Record a real AMI transcript of queue calls from a private lab PBX.

    .venv/bin/python -m bench.ami_record tests/fixtures/ami/lab_queue_calls.txt

Starts a lab Asterisk, logs in over a raw socket (Events: on) and keeps every
byte Asterisk sends while SIPp customers call the support queue: agent1 and
agent2 (SIPp UAS) answer the first two calls, a DTMF is played, the third
caller gives up while waiting. The file starts with the AMI banner; the login
response holds no secret (only what Asterisk sent is kept).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.ami_capture import raw_ami_capture
from cti.lab import LabPbx
from tests.peers.sipp import Dtmf, Pause, agent_answering, caller_call


def main(out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="ami-rec-") as tmp:
        pbx = LabPbx(Path(tmp) / "pbx")
        pbx.start()
        try:
            with raw_ami_capture(pbx, action_id="rec-1") as chunks:
                work = Path(tmp) / "sipp"
                agents = [
                    agent_answering(pbx, work, name, ring=1.5) for name in ("agent1", "agent2")
                ]
                time.sleep(1.0)
                callers = [
                    caller_call(pbx, work, caller_number="+79161234567",
                                caller_name="Иван Петров", steps=[Pause(2.0), Dtmf("5")],
                                hangup_after=6, name="c1"),
                    caller_call(pbx, work, caller_number="+79031112233", caller_name="Мария",
                                hangup_after=5, name="c2"),
                ]
                time.sleep(4.0)
                callers.append(caller_call(pbx, work, caller_number="84951234567",
                                           caller_name="Abandoner", hangup_after=3, name="c3"))
                for proc in callers + agents:
                    proc.wait(60)
                time.sleep(1.0)
        finally:
            pbx.stop()
        data = b"".join(chunks)
        out.write_bytes(data)
        print(f"{out}: {len(data)} bytes, {data.count(b'Event: ')} events")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
