"""Cost of one log record: stdlib text (baseline) vs cti's text and JSON handlers.

``python -m bench.log_format`` logs N records through each handler into memory,
five rounds, and prints the median microseconds per record and the ratio to
the stdlib baseline measured in the same run. cti's handlers add the node and
correlation ids and the secret redaction (:class:`cti.logs.LogContext`).
"""

from __future__ import annotations

import io
import logging
import statistics
import time

from cti.logs import TEXT_FORMAT, JsonFormatter, LogContext, correlate

N = 20_000
ROUNDS = 5


def per_record(kind: str) -> float:
    handler = logging.StreamHandler(io.StringIO())
    if kind == "stdlib text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.addFilter(LogContext("A"))
        handler.setFormatter(JsonFormatter() if kind == "cti json" else
                             logging.Formatter(TEXT_FORMAT))
    logger = logging.getLogger(f"bench.log_format.{kind}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    with correlate("call:pbx1:1700000000.12"):
        for i in range(N):
            logger.info("AMI %s up (%s): call %s answered by %s", "pbx1", "127.0.0.1:5038", i,
                        "PJSIP/agent1")
    return (time.perf_counter() - start) / N * 1e6


def main() -> None:
    kinds = ("stdlib text", "cti text", "cti json")
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(ROUNDS):
        for kind in kinds:
            runs[kind].append(per_record(kind))
    base = statistics.median(runs["stdlib text"])
    for kind in kinds:
        median = statistics.median(runs[kind])
        print(f"{kind:12s} {median:7.1f} us/record  x{median / base:.2f} vs stdlib text "
              f"(median of {ROUNDS} x {N})")


if __name__ == "__main__":
    main()
