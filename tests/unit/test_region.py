"""region_of: Chinese numbers in every shape the PBX sends, HK/Macau, and garbage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr_engine.region import (
    UNKNOWN_REGION,
    is_cantonese_region,
    normalise,
    normalise_province,
    province_for_city,
    region_of,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("number", "province", "city", "mobile"),
    [
        ("13926000001", "Guangdong", "Guangzhou", True),
        ("13800138000", "Beijing", "Beijing", True),
        # What phonenumbers 9.0 says for the other personas' numbers (their CIF homes differ).
        ("13700000003", "Liaoning", "Shenyang", True),
        ("13500000004", "Guangdong", "Guangzhou", True),
        ("075582345678", "Guangdong", "Shenzhen", False),
        ("+8675582345678", "Guangdong", "Shenzhen", False),
        ("0755-8234 5678", "Guangdong", "Shenzhen", False),
        ("+8613926000001", "Guangdong", "Guangzhou", True),
        ("008613926000001", "Guangdong", "Guangzhou", True),
        ("8613926000001", "Guangdong", "Guangzhou", True),
        ("+86 139 2600 0001", "Guangdong", "Guangzhou", True),
        ("02112345678", "Shanghai", "Shanghai", False),
        ("01012345678", "Beijing", "Beijing", False),
        ("+85291234567", "Hong Kong", "Hong Kong", True),
        ("0085291234567", "Hong Kong", "Hong Kong", True),
        ("85291234567", "Hong Kong", "Hong Kong", True),
        ("+85366123456", "Macau", "Macau", True),
    ],
)
def test_known_numbers(number: str, province: str, city: str, mobile: bool) -> None:
    r = region_of(number)
    assert (r.province, r.city, r.is_mobile) == (province, city, mobile)
    assert r.known


def test_chinese_names() -> None:
    r = region_of("13926000001")
    assert (r.province_zh, r.city_zh) == ("广东省", "广州市")
    assert region_of("09911234567").city_zh == "乌鲁木齐市"  # "新疆乌鲁木齐市" minus the province
    assert region_of("13800138000").province_zh == "北京市"


@pytest.mark.parametrize(
    "number",
    ["", None, "anonymous", "Anonymous", "unknown", "restricted", "<unknown>", "abc", "95533",
     "10086", "+", "+12", "1392600000", "13926000001;DROP", "0" * 40, "\x00\xff", "１３９"],
)
def test_unusable_caller_ids_are_unknown(number: str | None) -> None:
    assert region_of(number) == UNKNOWN_REGION
    assert normalise(number) is None
    assert not region_of(number).is_cantonese_region


@given(st.text(max_size=40))
def test_region_of_never_raises(text: str) -> None:
    r = region_of(text)
    assert isinstance(r.province, str)


def test_cantonese_regions() -> None:
    assert region_of("13926000001").is_cantonese_region
    assert region_of("075582345678").is_cantonese_region
    assert region_of("+85291234567").is_cantonese_region
    assert region_of("+85366123456").is_cantonese_region
    assert not region_of("13800138000").is_cantonese_region
    assert is_cantonese_region("广东省") and is_cantonese_region("guangdong")
    assert not is_cantonese_region(None) and not is_cantonese_region("Guangxi")


def test_city_and_province_tables() -> None:
    assert province_for_city("Shenzhen") == "Guangdong"
    assert province_for_city("guangzhou") == "Guangdong"
    assert province_for_city("Beijing") == "Beijing"
    assert province_for_city("Atlantis") is None
    assert normalise_province("内蒙古") == "Inner Mongolia"
    assert normalise_province("Macao") == "Macau"
    assert normalise_province("Narnia") is None


def test_normalise_is_the_storage_key() -> None:
    assert normalise("13926000001") == normalise("+86 139-2600-0001") == "+8613926000001"
    assert normalise("075582345678") == "+8675582345678"


def test_foreign_number() -> None:
    r = region_of("+14155550100")
    assert r.country == "US" and r.province == "" and not r.is_cantonese_region


def test_the_command_line_starts_without_the_geocoder_data_and_warm_loads_it() -> None:
    """The geocoder's data takes about 0.3 s to load: every `ivr-engine` command imports
    this module (through the CIF), so it is loaded on first use; the daemon loads it at start
    (`region.warm`, called by app.py) so that no caller waits for it."""
    probe = (
        "import sys, ivr_engine.cli, ivr_engine.app; "
        "from ivr_engine import region; "
        "before = 'phonenumbers.geocoder' in sys.modules; "
        "region.warm(); "
        "print(before, 'phonenumbers.geocoder' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr
