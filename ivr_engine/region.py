"""Where a caller is, from the number alone (the `phonenumbers` geocoder).

`region_of(number)` never raises: withheld, anonymous, empty or garbage caller IDs give
`UNKNOWN_REGION`. Chinese numbers arrive from the PBX in many shapes (`13926000001`,
`+8613926000001`, `008613926000001`, `8613926000001`, `075582345678`, `+8675582345678`);
all are normalised to E.164 first. Hong Kong (+852) and Macau (+853) are their own
"provinces" here because language routing treats them like Guangdong.

Province names are English pinyin without the administrative suffix ("Guangdong", "Beijing",
"Inner Mongolia"); `province_zh` keeps the Chinese name ("广东省"). Municipalities are their
own province and city ("Beijing", "Beijing").

Note on the demo personas (phonenumbers 9.0): 13700000003 geocodes to Shenyang, Liaoning and
13500000004 to Guangzhou, Guangdong. The CIF keeps each customer's *home* region separately:
the home region decides the out-of-region tier, the number's region decides the language when
the customer has no stated preference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumberType

# Provincial-level divisions: English name -> Chinese name as the geocoder writes it.
PROVINCES_ZH: dict[str, str] = {
    "Beijing": "北京市",
    "Tianjin": "天津市",
    "Shanghai": "上海市",
    "Chongqing": "重庆市",
    "Hebei": "河北省",
    "Shanxi": "山西省",
    "Liaoning": "辽宁省",
    "Jilin": "吉林省",
    "Heilongjiang": "黑龙江省",
    "Jiangsu": "江苏省",
    "Zhejiang": "浙江省",
    "Anhui": "安徽省",
    "Fujian": "福建省",
    "Jiangxi": "江西省",
    "Shandong": "山东省",
    "Henan": "河南省",
    "Hubei": "湖北省",
    "Hunan": "湖南省",
    "Guangdong": "广东省",
    "Hainan": "海南省",
    "Sichuan": "四川省",
    "Guizhou": "贵州省",
    "Yunnan": "云南省",
    "Shaanxi": "陕西省",
    "Gansu": "甘肃省",
    "Qinghai": "青海省",
    "Taiwan": "台湾省",
    "Inner Mongolia": "内蒙古自治区",
    "Guangxi": "广西壮族自治区",
    "Tibet": "西藏自治区",
    "Ningxia": "宁夏回族自治区",
    "Xinjiang": "新疆维吾尔自治区",
    "Hong Kong": "香港",
    "Macau": "澳门",
}
_SHORT_ZH = {
    "Inner Mongolia": "内蒙古", "Guangxi": "广西", "Tibet": "西藏", "Ningxia": "宁夏",
    "Xinjiang": "新疆",
}
MUNICIPALITIES = frozenset({"Beijing", "Tianjin", "Shanghai", "Chongqing"})
CANTONESE_PROVINCES = frozenset({"Guangdong", "Hong Kong", "Macau"})

# Major cities -> province, for data that names only a city (CSV imports, geocoder output for
# municipalities). Not exhaustive; `province_for_city` returns None for the rest.
CITY_PROVINCE: dict[str, str] = {
    **{c: "Guangdong" for c in (
        "Guangzhou", "Shenzhen", "Foshan", "Dongguan", "Zhuhai", "Shantou", "Zhongshan",
        "Jiangmen", "Huizhou", "Zhaoqing", "Zhanjiang", "Maoming", "Shaoguan", "Meizhou",
        "Qingyuan", "Yangjiang", "Chaozhou", "Jieyang", "Shanwei", "Heyuan", "Yunfu", "Shunde",
    )},
    **{c: c for c in MUNICIPALITIES},
    "Hong Kong": "Hong Kong",
    "Macau": "Macau",
    "Macao": "Macau",
    "Shenyang": "Liaoning", "Dalian": "Liaoning",
    "Hangzhou": "Zhejiang", "Ningbo": "Zhejiang", "Wenzhou": "Zhejiang",
    "Nanjing": "Jiangsu", "Suzhou": "Jiangsu", "Wuxi": "Jiangsu",
    "Chengdu": "Sichuan", "Wuhan": "Hubei", "Changsha": "Hunan", "Xi'an": "Shaanxi",
    "Xiamen": "Fujian", "Fuzhou": "Fujian", "Jinan": "Shandong", "Qingdao": "Shandong",
    "Zhengzhou": "Henan", "Shijiazhuang": "Hebei", "Taiyuan": "Shanxi", "Harbin": "Heilongjiang",
    "Changchun": "Jilin", "Hefei": "Anhui", "Nanchang": "Jiangxi", "Haikou": "Hainan",
    "Sanya": "Hainan", "Guiyang": "Guizhou", "Kunming": "Yunnan", "Lanzhou": "Gansu",
    "Xining": "Qinghai", "Hohhot": "Inner Mongolia", "Nanning": "Guangxi", "Guilin": "Guangxi",
    "Lhasa": "Tibet", "Yinchuan": "Ningxia", "Urumqi": "Xinjiang", "Taipei": "Taiwan",
}
_PROVINCE_ALIASES: dict[str, str] = {
    "macao": "Macau",
    "hongkong": "Hong Kong",
    "neimenggu": "Inner Mongolia",
    "xizang": "Tibet",
    **{name.lower(): name for name in PROVINCES_ZH},
    **{zh: en for en, zh in PROVINCES_ZH.items()},
    **{zh.rstrip("省市"): en for en, zh in PROVINCES_ZH.items()},
    **{zh: en for en, zh in _SHORT_ZH.items()},
}

# What Asterisk and carriers put in CALLERID(num) when the number is withheld.
_WITHHELD = frozenset({
    "", "anonymous", "unknown", "restricted", "private", "unavailable", "withheld",
    "<unknown>", "asterisk",
})
_JUNK = re.compile(r"[\s\-().]")


@dataclass(frozen=True, slots=True)
class Region:
    """A caller's region. Empty strings mean unknown; `country` is ISO 3166 alpha-2."""

    country: str
    province: str
    city: str
    is_mobile: bool
    province_zh: str = ""
    city_zh: str = ""

    @property
    def known(self) -> bool:
        return bool(self.province or self.country)

    @property
    def is_cantonese_region(self) -> bool:
        return is_cantonese_region(self.province)

    def label(self) -> str:
        """`Guangzhou, Guangdong`, `Beijing`, `Hong Kong`, or `unknown`."""
        if not self.province:
            return self.country or "unknown"
        if not self.city or self.city == self.province:
            return self.province
        return f"{self.city}, {self.province}"


UNKNOWN_REGION = Region(country="", province="", city="", is_mobile=False)


def normalise_province(name: str | None) -> str | None:
    """`guangdong`, `广东省`, `广东`, `Macao` -> the canonical English name; None if unknown."""
    if not name:
        return None
    key = name.strip()
    return (
        _PROVINCE_ALIASES.get(key)
        or _PROVINCE_ALIASES.get(key.lower())
        or _PROVINCE_ALIASES.get(key.lower().replace(" ", ""))
    )


def province_for_city(city: str | None) -> str | None:
    """`Shenzhen` -> `Guangdong`; municipalities map to themselves; None when not known."""
    if not city:
        return None
    key = city.strip()
    for k, v in CITY_PROVINCE.items():
        if k.lower() == key.lower():
            return v
    return None


def is_cantonese_region(province: str | None) -> bool:
    """Guangdong, Hong Kong and Macau get the Cantonese menu unless the customer says otherwise."""
    return normalise_province(province) in CANTONESE_PROVINCES


def parse_number(number: str | None) -> phonenumbers.PhoneNumber | None:
    """A caller ID as the PBX gives it -> a valid parsed number, or None. Never raises."""
    if number is None:
        return None
    raw = _JUNK.sub("", str(number))
    if raw.lower() in _WITHHELD or len(raw) > 24:
        return None
    if raw.startswith("+"):
        digits = raw[1:]
        international = True
    else:
        digits = raw
        international = False
    if not digits.isdigit() or len(digits) < 5:
        return None
    candidates: list[str] = []
    if international:
        candidates.append("+" + digits)
    elif digits.startswith("00"):
        candidates.append("+" + digits[2:])
    else:
        candidates.append(digits)
        # Trunks often drop the `+`: 8613926000001, 85291234567.
        if digits.startswith(("86", "852", "853")):
            candidates.append("+" + digits)
    for text in candidates:
        try:
            parsed = phonenumbers.parse(text, "CN")
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return parsed
    return None


def normalise(number: str | None) -> str | None:
    """E.164 (`+8613926000001`) for a valid number, else None. The key phones are stored under."""
    if number is None:
        return None
    return _analyse(str(number))[0]


def region_of(number: str | None) -> Region:
    """The region a caller ID belongs to; `UNKNOWN_REGION` for anything unusable."""
    if number is None:
        return UNKNOWN_REGION
    return _analyse(str(number))[1]


# Mainland mobiles in the shapes trunks send them: the common case, parsed without the
# general parser (which costs ~55 us of the ~120 us a cold lookup spends on the number).
_CN_MOBILE = re.compile(r"(?:\+86|0086|86)?(1[3-9]\d{9})")


@lru_cache(maxsize=16384)
def _analyse(number: str) -> tuple[str | None, Region]:
    # Parsing and geocoding cost ~100 us; the same customers call again and again.
    m = _CN_MOBILE.fullmatch(_JUNK.sub("", number))
    if m is not None:
        fast = phonenumbers.PhoneNumber(country_code=86, national_number=int(m.group(1)))
        ntype = phonenumbers.number_type(fast)  # UNKNOWN for an invalid number
        if ntype in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE):
            return "+86" + m.group(1), _region(fast, ntype)
    parsed = parse_number(number)
    if parsed is None:
        return None, UNKNOWN_REGION
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), _region(parsed)


def warm() -> None:
    """Load the geocoder's data now. It takes about 0.3 s, so it is loaded on first use
    rather than by every `ivr-engine` command that imports this module; the daemon calls this
    at start, so that no caller waits for it."""
    from phonenumbers import geocoder  # noqa: F401


def _describe(parsed: phonenumbers.PhoneNumber, lang: str) -> str:
    from phonenumbers import geocoder  # loaded once (see `warm`), then a module lookup

    description: str = geocoder.description_for_number(parsed, lang)
    return description


def _region(parsed: phonenumbers.PhoneNumber, ntype: int | None = None) -> Region:
    country = phonenumbers.region_code_for_number(parsed) or ""
    if ntype is None:
        ntype = phonenumbers.number_type(parsed)
    is_mobile = ntype in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)
    if country == "HK":
        return Region("HK", "Hong Kong", "Hong Kong", is_mobile, "香港", "香港")
    if country == "MO":
        return Region("MO", "Macau", "Macau", is_mobile, "澳门", "澳门")
    if country != "CN":
        city = _describe(parsed, "en")
        return Region(country, "", city, is_mobile)
    en = _describe(parsed, "en")
    zh = _describe(parsed, "zh")
    if not en or en == "China":
        # Nationwide ranges (IoT, virtual operators): the country is all the geocoder knows.
        return Region("CN", "", "", is_mobile)
    city, _, province = (part.strip() for part in en.rpartition(","))
    if not city:
        # "Beijing": a municipality, or a province-level description without a city.
        city, province = province, (province_for_city(province) or province)
        if province not in MUNICIPALITIES and city == province:
            city = ""
    province = normalise_province(province) or province
    province_zh = PROVINCES_ZH.get(province, "")
    city_zh = zh
    if province_zh:
        short_zh = _SHORT_ZH.get(province, province_zh.rstrip("省市"))
        # The geocoder writes "广东省广州市" but "新疆乌鲁木齐市" and "内蒙古呼和浩特市".
        for prefix in (province_zh, short_zh):
            if zh.startswith(prefix):
                city_zh = zh[len(prefix):]
                break
    if province in MUNICIPALITIES:
        city_zh = city_zh or province_zh
    return Region("CN", province, city, is_mobile, province_zh, city_zh)
