"""CTI_SMPP_URL keeps its query options all the way to the ESME settings."""

from __future__ import annotations

import pytest

from cti.config import ConfigError, load_settings
from cti.links.sms import default_config


def test_url_options_reach_the_esme_config() -> None:
    settings = load_settings(None, {
        "CTI_SMPP_URL": "smpp://esme:s3cret@127.0.0.1:2776?source_addr=MyShop&window=4&tps=30"
    })
    (link,) = settings.smpp
    config = default_config(link)
    assert (config.host, config.port, config.system_id) == ("127.0.0.1", 2776, "esme")
    assert config.source_addr == "MyShop"
    assert config.window == 4
    assert config.tps == 30.0
    assert "s3cret" not in repr(link)


def test_an_unknown_url_option_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"CTI_SMPP_URL.*windw"):
        load_settings(None, {"CTI_SMPP_URL": "smpp://esme:pw@127.0.0.1:2776?windw=4"})
