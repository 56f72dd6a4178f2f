"""``cti pbx render|check|diff|apply|import``: the engineers' PBX configuration tool."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cti.pbxconf.ami import AmiClient, AmiError, AmiTarget
from cti.pbxconf.apply import ApplyError, apply, compare_live
from cti.pbxconf.description import (
    Description,
    DescriptionError,
    dump_description,
    load_description,
    semantic_findings,
)
from cti.pbxconf.files import ConfImportError, diff, import_dir, read_dir, render


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pbx_command", required=True)
    sp = sub.add_parser("render", help="render the description into Asterisk files")
    sp.add_argument("desc", type=Path)
    sp.add_argument("--out", type=Path, required=True)
    sp = sub.add_parser("check", help="validate the description (and compare with a live PBX)")
    sp.add_argument("desc", type=Path)
    sp.add_argument("--ami-url", default=None, help="ami://user:secret@host:port")
    sp = sub.add_parser("diff", help="show what would change in the etc directory")
    sp.add_argument("desc", type=Path)
    sp.add_argument("--etc", type=Path, required=True)
    sp = sub.add_parser("apply", help="write, reload over AMI, verify, roll back on failure")
    sp.add_argument("desc", type=Path)
    sp.add_argument("--etc", type=Path, required=True)
    sp.add_argument("--ami-url", required=True,
                    help="ami://user:secret@host:port of a user with the 'command' class")
    sp = sub.add_parser("import", help="read an asterisk-conf style configuration back")
    sp.add_argument("--etc", type=Path, required=True)


def _load_checked(path: Path, *, probe: bool = True) -> Description | None:
    try:
        desc = load_description(path)
    except DescriptionError as exc:
        print(exc, file=sys.stderr)
        return None
    findings = semantic_findings(desc, probe_fastagi=probe)
    for finding in findings:
        print(finding, file=sys.stderr)
    if any(f.severity == "error" for f in findings):
        return None
    return desc


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (AmiError, ApplyError, ConfImportError, OSError) as exc:
        print(f"cti pbx {args.pbx_command}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.pbx_command == "import":
        print(dump_description(import_dir(args.etc)), end="")
        return 0
    desc = _load_checked(args.desc, probe=args.pbx_command in ("check", "apply"))
    if desc is None:
        return 2
    if args.pbx_command == "render":
        args.out.mkdir(parents=True, exist_ok=True)
        for name, text in render(desc.data).items():
            (args.out / name).write_text(text, encoding="utf-8")
        print(f"rendered into {args.out}")
        return 0
    if args.pbx_command == "check":
        if args.ami_url is None:
            print("description OK")
            return 0
        with AmiClient(AmiTarget.from_url(args.ami_url)) as ami:
            problems = compare_live(desc.data, ami)
        for problem in problems:
            print(f"live: {problem}")
        print("live PBX matches the description" if not problems else
              f"{len(problems)} difference(s) with the live PBX")
        return 0 if not problems else 3
    if args.pbx_command == "diff":
        wanted = render(desc.data)
        text = diff(read_dir(args.etc, sorted(wanted)), wanted)
        print(text, end="")
        return 0 if not text else 1
    result = apply(desc.data, args.etc, AmiTarget.from_url(args.ami_url))
    if not result.changed:
        print("nothing to change")
        return 0
    print(f"changed: {', '.join(result.changed)}; backup in {result.backup}")
    print(f"reloaded: {', '.join(result.reloads) or 'nothing'}; verified")
    if result.restart_needed:
        print(f"restart Asterisk to use: {', '.join(result.restart_needed)}")
    return 0
