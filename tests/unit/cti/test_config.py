from __future__ import annotations

from pathlib import Path

import pytest

from cti.config import ConfigError, HostPort, load_settings

TOML = """
[server]
http_listen = "127.0.0.1:9000"
default_region = "gb"
bootstrap_admin = "root:file-secret"

[[pbx]]
name = "north"
url = "ami://cti:north-secret@10.0.0.1:5038"

[[pbx]]
name = "south"
url = "ami://cti:south-secret@10.0.0.2"

[[smpp]]
url = "smpp://esme:smpp-secret@127.0.0.1:2775"
"""


def test_defaults() -> None:
    s = load_settings(None, {})
    assert s.http_listen == HostPort("127.0.0.1", 8080)
    assert s.default_region == "RU"
    assert s.database_url() == "sqlite+aiosqlite:///var/cti.sqlite3"
    assert s.ami == () and s.redis_url is None and s.bootstrap_admin is None


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cti.toml"
    path.write_text(TOML)
    s = load_settings(path, {})
    assert s.http_listen.port == 9000 and s.default_region == "GB"
    assert [(p.name, p.host, p.port) for p in s.ami] == [
        ("north", "10.0.0.1", 5038),
        ("south", "10.0.0.2", 5038),
    ]
    assert s.smpp[0].system_id == "esme" and s.smpp[0].password == "smpp-secret"
    env = {
        "CTI_HTTP_LISTEN": "0.0.0.0:8181",
        "CTI_AMI_URL": "ami://u:env-secret@pbx.local:6038",
        "CTI_DEFAULT_REGION": "RU",
        "CTI_DB_URL": "postgresql+asyncpg://u:db-secret@h/cti",
        "CTI_REDIS_URL": "redis://:redis-secret@127.0.0.1:6379/0",
        "CTI_AGI_LISTEN": "127.0.0.1:4573",
        "CTI_BOOTSTRAP_ADMIN": "boss:boot-secret",
    }
    s = load_settings(path, env)
    assert s.http_listen == HostPort("0.0.0.0", 8181)
    assert len(s.ami) == 1 and s.ami[0].port == 6038 and s.ami[0].secret == "env-secret"
    assert s.default_region == "RU" and s.agi_listen == HostPort("127.0.0.1", 4573)
    assert s.bootstrap_admin is not None and s.bootstrap_admin.login == "boss"
    text = repr(s)
    for secret in ("env-secret", "smpp-secret", "db-secret", "redis-secret", "boot-secret"):
        assert secret not in text


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CTI_HTTP_LISTEN": "8080"}, "CTI_HTTP_LISTEN"),
        ({"CTI_HTTP_LISTEN": "h:99999"}, "out of range"),
        ({"CTI_AMI_URL": "http://u:p@h:1"}, "CTI_AMI_URL"),
        ({"CTI_AMI_URL": "ami://h:5038"}, "user and secret"),
        ({"CTI_DEFAULT_REGION": "XX"}, "CTI_DEFAULT_REGION"),
        ({"CTI_BOOTSTRAP_ADMIN": "nopassword"}, "login:password"),
        ({"CTI_SMPP_URL": "smpp://a:b@h:port"}, "CTI_SMPP_URL"),
    ],
)
def test_bad_environment_names_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(None, env)


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_settings(bad, {})
    bad.write_text('[server]\nmax_text_conversations = "three"\n')
    with pytest.raises(ConfigError, match="max_text_conversations"):
        load_settings(bad, {})
    bad.write_text('[[pbx]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"pbx\[0\]\.url"):
        load_settings(bad, {})


def test_callback_caller_id_is_checked(tmp_path: Path) -> None:
    conf = tmp_path / "cti.toml"
    conf.write_text('[callbacks]\ncaller_id = \'"Shop" <+74950000000>\'\n', encoding="utf-8")
    assert load_settings(conf, environ={}).callback_caller_id == '"Shop" <+74950000000>'
    conf.write_text('[callbacks]\ncaller_id = "Shop\\r\\nX-Injected: 1"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"callbacks\.caller_id"):
        load_settings(conf, environ={})
