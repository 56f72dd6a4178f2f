"""Schema errors with line numbers, semantic checks, render/import round trip, diff."""

from __future__ import annotations

import argparse
import copy
import socket
from pathlib import Path
from typing import Any

import pytest

from cti.pbxconf import cli
from cti.pbxconf.description import (
    DescriptionError,
    dump_description,
    load_description,
    parse_description,
    secret_bits,
    semantic_findings,
)
from cti.pbxconf.files import (
    ConfImportError,
    changed_files,
    diff,
    import_dir,
    parse_conf,
    read_dir,
    render,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "asterisk-conf" / "contact-center.example.yaml"


def example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def example() -> dict[str, Any]:
    return copy.deepcopy(load_description(EXAMPLE).data)


def line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


def errors(data: dict[str, Any]) -> list[str]:
    desc = parse_description(dump_description(data), "desc.yaml")
    return [f"{f.line}: {f.message}" for f in semantic_findings(desc, probe_fastagi=False)
            if f.severity == "error"]


def test_example_is_valid_and_clean() -> None:
    desc = load_description(EXAMPLE)
    assert [f for f in semantic_findings(desc, probe_fastagi=False)] == []


def test_schema_error_names_file_line_and_field() -> None:
    text = example_text().replace("strategy: linear", "strategy: sometimes")
    with pytest.raises(DescriptionError) as info:
        parse_description(text, "cc.yaml")
    (finding,) = info.value.findings
    assert finding.source == "cc.yaml"
    assert finding.line == line_of(text, "strategy: sometimes")
    assert "queue_settings/strategy" in finding.message and "'sometimes'" in finding.message
    assert str(finding).startswith(f"cc.yaml:{finding.line}: error: ")


def test_schema_error_inside_a_list_item_points_at_the_item_line() -> None:
    text = example_text().replace("extension: '1003'", "extension: 'x1003'")
    with pytest.raises(DescriptionError) as info:
        parse_description(text, "cc.yaml")
    (finding,) = info.value.findings
    assert finding.line == line_of(text, "extension: 'x1003'")
    assert "agents/2/extension" in finding.message


def test_missing_key_and_unknown_key_are_reported_together() -> None:
    text = example_text().replace("  retry: 2\n", "  retries: 2\n")
    with pytest.raises(DescriptionError) as info:
        parse_description(text, "cc.yaml")
    messages = " | ".join(f.message for f in info.value.findings)
    assert "'retry' is a required property" in messages
    assert "'retries' was unexpected" in messages
    assert all(f.line == line_of(text, "queue_settings:") for f in info.value.findings)


def test_yaml_syntax_error_has_a_line() -> None:
    text = example_text().replace("  sip_port: 5060", "  sip_port: [5060")
    with pytest.raises(DescriptionError) as info:
        parse_description(text, "cc.yaml")
    assert info.value.findings[0].line is not None
    assert "invalid YAML" in info.value.findings[0].message


def test_semicolon_in_a_secret_is_refused_by_the_schema() -> None:
    text = example_text().replace("Xq7-vR2pL9wKz4Tb", "Xq7-vR2pL9;wKz4Tb")
    with pytest.raises(DescriptionError) as info:
        parse_description(text, "cc.yaml")
    assert info.value.findings[0].line == line_of(text, "Xq7-vR2pL9;wKz4Tb")


def test_undefined_member_and_duplicate_extension() -> None:
    data = example()
    data["queues"][1]["members"].append("agent9")
    data["agents"][3]["extension"] = "200"
    found = errors(data)
    assert any("member 'agent9' is not a defined agent" in e for e in found)
    assert any("duplicate extension 200 (queue sales; also used at agents/3/extension)" in e
               for e in found)


def test_ami_user_lacking_classes_and_weak_secrets() -> None:
    data = example()
    data["ami"]["read"].remove("agent")
    data["ami"]["write"].remove("originate")
    data["ami"]["secret"] = "aaaaaaaaaaaaaaaa"
    data["agents"][0]["secret"] = "short1"
    found = " | ".join(errors(data))
    assert "lacks read class(es) agent" in found
    assert "lacks write class(es) originate" in found
    assert "AMI user cti: secret too weak" in found
    assert "agent agent1: secret too short (6 characters" in found


def test_extra_write_classes_are_a_warning() -> None:
    data = example()
    data["ami"]["write"].append("command")
    desc = parse_description(dump_description(data), "d.yaml")
    (finding,) = semantic_findings(desc, probe_fastagi=False)
    assert finding.severity == "warning" and "command" in finding.message


def test_secret_bits_orders_secrets() -> None:
    assert secret_bits("aaaaaaaaaaaaaaaa") < 60 <= secret_bits("Xq7-vR2pL9wKz4Tb")


def test_unreachable_fastagi_is_a_warning_and_a_listening_one_is_not() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        data = example()
        data["ivr"]["fastagi"]["port"] = port
        desc = parse_description(dump_description(data), "d.yaml")
        assert semantic_findings(desc, probe_timeout=2.0) == []
    findings = semantic_findings(desc, probe_timeout=2.0)
    assert [f.severity for f in findings] == ["warning"]
    assert f"FastAGI 127.0.0.1:{port} is not reachable" in findings[0].message


def test_render_import_round_trip(tmp_path: Path) -> None:
    data = example()
    for name, text in render(data).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert import_dir(tmp_path) == data
    assert "[agent3]\ntype = auth" in (tmp_path / "pjsip.conf").read_text()


def test_import_refuses_a_foreign_configuration(tmp_path: Path) -> None:
    for name, text in render(example()).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "manager.conf").write_text("[general]\nenabled = yes\n", encoding="utf-8")
    with pytest.raises(ConfImportError, match=r"manager\.conf must hold one user, found 0"):
        import_dir(tmp_path)


def test_parse_conf_keeps_duplicates_and_strips_comments() -> None:
    sections = parse_conf("[a]\nx = 1 ; note\nx => 2\n[a]\ny=3\n")
    assert sections == [("a", [("x", "1"), ("x", "2")]), ("a", [("y", "3")])]
    with pytest.raises(ConfImportError, match="line 1"):
        parse_conf("[broken\n")


def test_diff_shows_only_the_new_agent(tmp_path: Path) -> None:
    data = example()
    for name, text in render(data).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    data["agents"].append({"name": "agent5", "secret": "Zx8-kLm3Qp7rTv2W",
                           "extension": "1005", "display_name": "Agent 5"})
    wanted = render(data)
    current = read_dir(tmp_path, sorted(wanted))
    assert changed_files(current, wanted) == ["extensions.conf", "pjsip.conf"]
    text = diff(current, wanted)
    assert "+[agent5]" in text and "+exten => 1005,1,Dial(PJSIP/agent5,30)" in text
    assert not [line for line in text.splitlines()
                if line.startswith("-") and not line.startswith("---")]


def test_cli_render_and_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    out = tmp_path / "etc"
    assert cli.run(parser.parse_args(["render", str(EXAMPLE), "--out", str(out)])) == 0
    assert (out / "queues.conf").exists()
    assert cli.run(parser.parse_args(["diff", str(EXAMPLE), "--etc", str(out)])) == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text(example_text().replace("- agent4\n", "- agent7\n"), encoding="utf-8")
    assert cli.run(parser.parse_args(["diff", str(broken), "--etc", str(out)])) == 2
    err = capsys.readouterr().err
    assert f"{broken}:{line_of(broken.read_text(), '- agent7')}: error: queue 'sales': " \
           "member 'agent7' is not a defined agent" in err


def with_queue_overrides_and_registration(data: dict[str, Any]) -> dict[str, Any]:
    data["queue_settings"]["servicelevel"] = 30
    data["queues"][1].update({"strategy": "ringall", "timeout": 25, "wrapuptime": 10,
                              "weight": 5, "maxlen": 40})
    data["trunks"]["outbound"]["registration"] = {
        "username": "cc-trunk", "secret": "Tr7_uNk9-Reg4Xq2", "contact_user": "74951234567",
        "expiration": 600, "retry_interval": 20}
    return data


def test_per_queue_settings_and_a_registering_trunk_render_and_round_trip(
    tmp_path: Path,
) -> None:
    data = with_queue_overrides_and_registration(example())
    desc = parse_description(dump_description(data), "desc.yaml")
    assert semantic_findings(desc, probe_fastagi=False) == []
    files = render(data)
    queues = parse_conf(files["queues.conf"])
    support = dict(next(items for name, items in queues if name == "support"))
    sales = dict(next(items for name, items in queues if name == "sales"))
    assert (support["strategy"], support["timeout"], support["servicelevel"]) == \
        ("linear", "15", "30")
    assert "weight" not in support and "maxlen" not in support
    assert (sales["strategy"], sales["timeout"], sales["wrapuptime"], sales["weight"],
            sales["maxlen"], sales["servicelevel"]) == ("ringall", "25", "10", "5", "40", "30")
    pjsip = parse_conf(files["pjsip.conf"])
    reg = dict(next(items for name, items in pjsip if name == "carrier-reg"))
    assert reg["type"] == "registration" and reg["outbound_auth"] == "carrier-auth"
    assert reg["server_uri"] == "sip:127.0.0.1:5070"
    assert reg["client_uri"] == "sip:cc-trunk@127.0.0.1:5070"
    assert (reg["contact_user"], reg["expiration"], reg["line"], reg["endpoint"]) == \
        ("74951234567", "600", "yes", "carrier")
    carrier = dict(next(items for name, items in pjsip
                        if name == "carrier" and ("type", "endpoint") in items))
    assert carrier["outbound_auth"] == "carrier-auth"
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert import_dir(tmp_path) == data


def test_registration_defaults_weak_secret_and_reserved_names() -> None:
    data = example()
    data["trunks"]["outbound"]["registration"] = {
        "username": "cc", "secret": "password", "contact_user": "100"}
    assert any("trunk registration: secret too short" in e for e in errors(data))
    files = render(example() | {"trunks": {**data["trunks"], "outbound": {
        **data["trunks"]["outbound"], "registration": {
            "username": "cc", "secret": "Tr7_uNk9-Reg4Xq2", "contact_user": "100"}}}})
    reg = dict(next(items for name, items in parse_conf(files["pjsip.conf"])
                    if name == "carrier-reg"))
    assert (reg["expiration"], reg["retry_interval"]) == ("300", "30")
    data = example()
    data["queues"][0]["name"] = "carrier-reg"
    assert any("reserved by the templates" in e for e in errors(data))


def test_queue_override_out_of_range_is_refused_with_its_line() -> None:
    data = example()
    data["queues"][1]["strategy"] = "roundrobin"
    text = dump_description(data)
    with pytest.raises(DescriptionError) as info:
        parse_description(text, "desc.yaml")
    (finding,) = info.value.findings
    assert "queues/1/strategy" in finding.message
    assert finding.line == line_of(text, "strategy: roundrobin")


def test_per_queue_offers_render_and_round_trip(tmp_path: Path) -> None:
    data = example()
    data["queues"][0]["offers"] = ["callback"]
    data["queues"][1]["offers"] = []
    files = render(data)
    queues = dict(parse_conf(files["queues.conf"]))
    assert dict(queues["support"])["context"] == "cti-queue-exit-support"
    assert "context" not in dict(queues["sales"])
    ivr = parse_conf(files["extensions_ivr.conf"])
    support_exit = next(items for name, items in ivr if name == "cti-queue-exit-support")
    assert support_exit == [("exten", "2,1,Goto(cti-queue-exit,2,1)")]
    assert not [name for name, _ in ivr if name == "cti-queue-exit-sales"]
    globals_ = dict(next(items for name, items in parse_conf(files["extensions.conf"])
                         if name == "globals"))
    assert globals_["CTI_OFFERS_support"] == "2" and globals_["CTI_OFFERS_sales"] == ""
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert import_dir(tmp_path) == data
    data["queues"][0]["offers"] = ["sms"]
    with pytest.raises(DescriptionError, match="queues/0/offers"):
        parse_description(dump_description(data), "desc.yaml")
