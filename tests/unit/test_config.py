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
