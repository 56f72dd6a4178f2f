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


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first non-option word)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand is listed; only ``only``'s module is imported and configured
    (``None``: all of them). Importing every module costs seconds (aiohttp,
    SQLAlchemy, pjsua2...) that ``cti lab status`` should not pay."""
    parser = argparse.ArgumentParser(prog="cti", description="Omnichannel CTI server for Asterisk")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if not _available(module_name):
            continue
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(module_name)
            module.configure(sp)
            sp.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen(words)
    parser = build_parser(only=chosen or "")  # no subcommand: help or an error, nothing imported
    args = parser.parse_args(words)
    rc: int = args._module.run(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
