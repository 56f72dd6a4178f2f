"""The payload -> report columns rule (cti/reports/columns.py), used by every insert."""

from __future__ import annotations

from cti.reports.columns import REPORT_COLUMNS, report_value, report_values


def test_json_numbers_become_floats_anything_else_null() -> None:
    payload = {"wait": 12, "talk": 30.5, "hold": True, "ring": "2", "queue": "sales"}
    assert report_values(payload) == {
        "wait_s": 12.0,
        "talk_s": 30.5,
        "hold_s": None,
        "ring_s": None,
    }
    assert report_values({}) == dict.fromkeys(REPORT_COLUMNS)
    assert report_values(None) == dict.fromkeys(REPORT_COLUMNS)


def test_one_column_from_insert_parameters() -> None:
    assert report_value("wait_s", {"payload": {"wait": 7}}) == 7.0
    assert isinstance(report_value("wait_s", {"payload": {"wait": 7}}), float)
    assert report_value("talk_s", {"payload": {"wait": 7}}) is None
    assert report_value("wait_s", {"kind": "closed"}) is None  # no payload given
    assert report_value("wait_s", {"payload": None}) is None
