"""The `cti` command: one entry point, one module per subcommand.

Each subcommand module exposes ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("cti.serve", "run the CTI server"),
    "lab": ("cti.lab", "start / stop / inspect the lab Asterisk PBX"),
    "phone": ("cti.softphone", "the agent softphone (pjsua2)"),
    "pbx": ("cti.pbxconf.cli", "render / check / diff / apply the PBX configuration"),
    "reports": ("cti.reports.cli", "import Asterisk queue_log / CDR records into the history"),
    "db": ("cti.partitions", "database maintenance: history retention"),
}


def _available(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cti", description="Omnichannel CTI server for Asterisk")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if not _available(module_name):
            continue
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(sp)
        sp.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rc: int = args._module.run(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
