import re

import pytest

from ivr_engine import config
from ivr_engine.errors import ConfigError


def test_file_then_environment_then_overrides(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text('[agi]\nport = 5000\nallow = ["10.0.0.0/8"]\n[ami]\nsecret = "s3cret"\n')
    env = {"IVR_ENGINE_AGI_PORT": "6000"}
    s = config.load(f, environ=env, overrides={"log": {"level": "DEBUG"}})
    assert s.agi.port == 6000
    assert s.agi.allow == ("10.0.0.0/8",)
    assert s.log.level == "DEBUG"
    assert s.redacted()["ami"]["secret"] == "********"


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text("[agi]\nprot = 5000\n")
    with pytest.raises(ConfigError) as exc:
        config.load(f, environ={})
    assert str(f) in str(exc.value) and "agi.prot" in str(exc.value)


def test_wrong_type_and_unknown_section(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text('[agi]\nport = "many"\n')
    with pytest.raises(ConfigError, match="agi.port"):
        config.load(f, environ={})
    with pytest.raises(ConfigError, match="environment: nosuch"):
        config.load(None, environ={"IVR_ENGINE_NOSUCH_KEY": "1"})


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.toml", environ={})


def test_acd_is_on_by_default_with_the_repo_roster():
    s = config.load(None, environ={})
    assert s.acd.enabled is True and s.acd.roster == "asterisk-conf/agents.yaml"
    assert (s.acd.callback_key, s.acd.operator_key) == ("1", "0")
    assert s.redacted()["acd"]["announce_every"] == 30.0


def test_acd_settings_from_file_and_environment(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text("[acd]\nenabled = false\nring_timeout = 20\nannounce_every = 0\n")
    s = config.load(f, environ={"IVR_ENGINE_ACD_CALLBACK_KEY": "*"})
    assert s.acd.enabled is False and s.acd.ring_timeout == 20.0
    assert s.acd.announce_every == 0.0 and s.acd.callback_key == "*"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ring_timeout", "0", "between 1 and 300"),
        ("max_misses", "0", "between 1 and 100"),
        ("announce_every", "5", "0 (off) or between 10 and 3600"),
        ("callback_key", "12", "one key of 0-9 * #"),
        ("operator_key", "x", "one key of 0-9 * #"),
        ("operator_key", "1", "must differ from callback_key"),
        ("callback_dial", "PJSIP/devtrunk", "with {number}"),
        ("callback_retries", "9", "between 0 and 5"),
        ("recordings_dir", "recordings", "an absolute path"),
        ("huge_pages_every", "5", "0 (never) or between 60 and 86400"),
    ],
)
def test_bad_acd_settings_name_the_key(key, value, message):
    env = {f"IVR_ENGINE_ACD_{key.upper()}": value}
    with pytest.raises(ConfigError, match=f"environment: acd.{key}: .*{re.escape(message)}") as exc:
        config.load(None, environ=env)
    assert exc.value.key == f"acd.{key}"
