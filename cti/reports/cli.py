"""``cti reports import-queue-log FILE`` / ``cti reports import-cdr FILE``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from cti.config import ConfigError, load_settings
from cti.errors import InvalidInput
from cti.reports.importers import AsteriskImporter, ImportStats, cdr_rows, queue_log_lines
from cti.reports.period import parse_tz
from cti.services import Services


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, what in (
        ("import-queue-log", "import an Asterisk queue_log file (re-import adds nothing)"),
        ("import-cdr", "import a cdr_csv Master.csv (loguniqueid=yes; re-import adds nothing)"),
    ):
        sp = sub.add_parser(name, help=what, description=what)
        sp.add_argument("file", type=Path)
        sp.add_argument(
            "--pbx",
            help="the PBX name the calls belong to (default: the first configured AMI server)",
        )
        if name == "import-cdr":
            sp.add_argument(
                "--tz", default="UTC", help="time zone of the CDR times (usegmtime: UTC)"
            )


async def _import(args: argparse.Namespace) -> ImportStats:
    settings = load_settings(args.config)
    pbx = args.pbx or (settings.ami[0].name if settings.ami else "pbx1")
    services = Services(settings)
    await services.start()
    try:
        importer = AsteriskImporter(services, pbx)
        if args.action == "import-queue-log":
            return await importer.import_queue_log(queue_log_lines(args.file))
        return await importer.import_cdr(cdr_rows(args.file), parse_tz(args.tz))
    finally:
        await services.stop()


def run(args: argparse.Namespace) -> int:
    try:
        stats = asyncio.run(_import(args))
    except (ConfigError, InvalidInput) as exc:
        print(f"cti reports: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"cti reports: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats.json()))
    return 0
