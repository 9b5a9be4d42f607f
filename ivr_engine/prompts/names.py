"""Names the hotline speaks that are not numbers: surnames, titles, regions.

Asterisk cannot speak arbitrary text at run time and we do not synthesize during a call, so
every name is a pre-built word sound. The tables cover the most common surnames (about 100,
well over 80 % of the population) and every provincial-level division plus the major cities.
A value outside the tables is a `SpeechValueError`: the flow should greet without the name.

Surnames: keyed by a slug; looked up by simplified or traditional characters (exact), by pinyin
(several characters share a pinyin: 徐/许 are both "Xu"; pinyin gives the more common one, so
the CIF should store the characters), or by a few unambiguous Hong Kong romanisations (Chan,
Cheung, Leung ...). English speaks the pinyin ("Mr Chen").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ivr_engine.prompts.errors import SpeechValueError


@dataclass(frozen=True)
class Name:
    slug: str  # file-name part: "chen", "xu_2"
    cmn: str  # simplified characters
    yue: str  # traditional characters
    en: str  # English (pinyin)

    def text(self, lang: str) -> str:
        return {"cmn": self.cmn, "yue": self.yue, "en": self.en}[lang]


# (simplified, traditional, pinyin), most common first so that a shared pinyin picks it.
_SURNAMES: tuple[tuple[str, str, str], ...] = (
    ("王", "王", "Wang"), ("李", "李", "Li"), ("张", "張", "Zhang"), ("刘", "劉", "Liu"),
    ("陈", "陳", "Chen"), ("杨", "楊", "Yang"), ("黄", "黃", "Huang"), ("赵", "趙", "Zhao"),
    ("吴", "吳", "Wu"), ("周", "周", "Zhou"), ("徐", "徐", "Xu"), ("孙", "孫", "Sun"),
    ("马", "馬", "Ma"), ("朱", "朱", "Zhu"), ("胡", "胡", "Hu"), ("郭", "郭", "Guo"),
    ("何", "何", "He"), ("林", "林", "Lin"), ("高", "高", "Gao"), ("罗", "羅", "Luo"),
    ("郑", "鄭", "Zheng"), ("梁", "梁", "Liang"), ("谢", "謝", "Xie"), ("宋", "宋", "Song"),
    ("唐", "唐", "Tang"), ("许", "許", "Xu"), ("邓", "鄧", "Deng"), ("韩", "韓", "Han"),
    ("冯", "馮", "Feng"), ("曹", "曹", "Cao"), ("彭", "彭", "Peng"), ("曾", "曾", "Zeng"),
    ("肖", "蕭", "Xiao"), ("田", "田", "Tian"), ("董", "董", "Dong"), ("潘", "潘", "Pan"),
    ("袁", "袁", "Yuan"), ("蔡", "蔡", "Cai"), ("蒋", "蔣", "Jiang"), ("余", "余", "Yu"),
    ("于", "于", "Yu"), ("杜", "杜", "Du"), ("叶", "葉", "Ye"), ("程", "程", "Cheng"),
    ("魏", "魏", "Wei"), ("苏", "蘇", "Su"), ("吕", "呂", "Lyu"), ("丁", "丁", "Ding"),
    ("任", "任", "Ren"), ("卢", "盧", "Lu"), ("姚", "姚", "Yao"), ("沈", "沈", "Shen"),
    ("钟", "鍾", "Zhong"), ("姜", "姜", "Jiang"), ("崔", "崔", "Cui"), ("谭", "譚", "Tan"),
    ("陆", "陸", "Lu"), ("范", "范", "Fan"), ("汪", "汪", "Wang"), ("廖", "廖", "Liao"),
    ("石", "石", "Shi"), ("金", "金", "Jin"), ("韦", "韋", "Wei"), ("贾", "賈", "Jia"),
    ("夏", "夏", "Xia"), ("付", "付", "Fu"), ("方", "方", "Fang"), ("邹", "鄒", "Zou"),
    ("熊", "熊", "Xiong"), ("白", "白", "Bai"), ("孟", "孟", "Meng"), ("秦", "秦", "Qin"),
    ("邱", "邱", "Qiu"), ("侯", "侯", "Hou"), ("江", "江", "Jiang"), ("尹", "尹", "Yin"),
    ("薛", "薛", "Xue"), ("闫", "閆", "Yan"), ("段", "段", "Duan"), ("雷", "雷", "Lei"),
    ("龙", "龍", "Long"), ("黎", "黎", "Li"), ("史", "史", "Shi"), ("陶", "陶", "Tao"),
    ("贺", "賀", "He"), ("毛", "毛", "Mao"), ("郝", "郝", "Hao"), ("顾", "顧", "Gu"),
    ("龚", "龔", "Gong"), ("邵", "邵", "Shao"), ("万", "萬", "Wan"), ("覃", "覃", "Qin"),
    ("武", "武", "Wu"), ("钱", "錢", "Qian"), ("戴", "戴", "Dai"), ("严", "嚴", "Yan"),
    ("莫", "莫", "Mo"), ("孔", "孔", "Kong"), ("向", "向", "Xiang"), ("常", "常", "Chang"),
    ("麦", "麥", "Mai"), ("欧阳", "歐陽", "Ouyang"), ("司马", "司馬", "Sima"),
    ("上官", "上官", "Shangguan"), ("诸葛", "諸葛", "Zhuge"),
)

# Hong Kong romanisations that name one surname only.
_HK_ROMANISATIONS: dict[str, str] = {
    "chan": "陈", "cheung": "张", "leung": "梁", "lau": "刘", "ng": "吴", "tsang": "曾",
    "lam": "林", "kwok": "郭", "yeung": "杨", "tse": "谢", "chow": "周", "choi": "蔡",
    "fung": "冯", "mak": "麦", "tsui": "徐", "lui": "吕", "yip": "叶",
}


def _slugs(rows: tuple[tuple[str, str, str], ...]) -> list[Name]:
    out: list[Name] = []
    seen: dict[str, int] = {}
    for simp, trad, pinyin in rows:
        base = pinyin.lower()
        seen[base] = seen.get(base, 0) + 1
        slug = base if seen[base] == 1 else f"{base}_{seen[base]}"
        out.append(Name(slug, simp, trad, pinyin))
    return out


SURNAMES: tuple[Name, ...] = tuple(_slugs(_SURNAMES))
_SURNAME_INDEX: dict[str, Name] = {}
for _n in SURNAMES:
    _SURNAME_INDEX.setdefault(_n.cmn, _n)
    _SURNAME_INDEX.setdefault(_n.yue, _n)
    _SURNAME_INDEX.setdefault(_n.en.lower(), _n)
for _rom, _simp in _HK_ROMANISATIONS.items():
    _SURNAME_INDEX.setdefault(_rom, _SURNAME_INDEX[_simp])


def surname(value: object) -> Name:
    """The surname entry for "陈", "陳", "Chen", "chen" or "Chan"."""
    if not isinstance(value, str) or not value.strip():
        raise SpeechValueError(f"surname must be a non-empty string, got {type(value).__name__}")
    key = value.strip()
    found = _SURNAME_INDEX.get(key) or _SURNAME_INDEX.get(key.lower())
    if found is None:
        raise SpeechValueError(
            f"surname {key!r} has no pre-built sound (add it to ivr_engine/prompts/names.py)"
        )
    return found


TITLES: dict[str, Name] = {
    "mr": Name("mr", "先生", "先生", "Mr."),
    "ms": Name("ms", "女士", "女士", "Ms."),
}
_TITLE_ALIASES = {
    "mr": "mr", "mr.": "mr", "m": "mr", "male": "mr", "先生": "mr",
    "ms": "ms", "ms.": "ms", "mrs": "ms", "mrs.": "ms", "miss": "ms", "f": "ms", "female": "ms",
    "女士": "ms",
}


def title(value: object) -> Name | None:
    """The title entry for "mr"/"ms" (and aliases); None for "" (no title is spoken)."""
    text = str(value).strip().lower() if value is not None else ""
    if not text:
        return None
    try:
        return TITLES[_TITLE_ALIASES[text]]
    except KeyError:
        raise SpeechValueError(f"title {value!r} is not one of mr, ms") from None


# (English as the phonenumbers geocoder writes it, simplified, traditional)
_PROVINCES: tuple[tuple[str, str, str], ...] = (
    ("Beijing", "北京", "北京"), ("Tianjin", "天津", "天津"), ("Shanghai", "上海", "上海"),
    ("Chongqing", "重庆", "重慶"), ("Hebei", "河北", "河北"), ("Shanxi", "山西", "山西"),
    ("Liaoning", "辽宁", "遼寧"), ("Jilin", "吉林", "吉林"), ("Heilongjiang", "黑龙江", "黑龍江"),
    ("Jiangsu", "江苏", "江蘇"), ("Zhejiang", "浙江", "浙江"), ("Anhui", "安徽", "安徽"),
    ("Fujian", "福建", "福建"), ("Jiangxi", "江西", "江西"), ("Shandong", "山东", "山東"),
    ("Henan", "河南", "河南"), ("Hubei", "湖北", "湖北"), ("Hunan", "湖南", "湖南"),
    ("Guangdong", "广东", "廣東"), ("Hainan", "海南", "海南"), ("Sichuan", "四川", "四川"),
    ("Guizhou", "贵州", "貴州"), ("Yunnan", "云南", "雲南"), ("Shaanxi", "陕西", "陝西"),
    ("Gansu", "甘肃", "甘肅"), ("Qinghai", "青海", "青海"), ("Taiwan", "台湾", "臺灣"),
    ("Inner Mongolia", "内蒙古", "內蒙古"), ("Guangxi", "广西", "廣西"), ("Tibet", "西藏", "西藏"),
    ("Ningxia", "宁夏", "寧夏"), ("Xinjiang", "新疆", "新疆"), ("Hong Kong", "香港", "香港"),
    ("Macau", "澳门", "澳門"),
)
_CITIES: tuple[tuple[str, str, str], ...] = (
    ("Guangzhou", "广州", "廣州"), ("Shenzhen", "深圳", "深圳"), ("Dongguan", "东莞", "東莞"),
    ("Foshan", "佛山", "佛山"), ("Zhuhai", "珠海", "珠海"), ("Shantou", "汕头", "汕頭"),
    ("Zhongshan", "中山", "中山"), ("Jiangmen", "江门", "江門"), ("Huizhou", "惠州", "惠州"),
    ("Shenyang", "沈阳", "瀋陽"), ("Dalian", "大连", "大連"), ("Hangzhou", "杭州", "杭州"),
    ("Ningbo", "宁波", "寧波"), ("Nanjing", "南京", "南京"), ("Suzhou", "苏州", "蘇州"),
    ("Wuxi", "无锡", "無錫"), ("Wuhan", "武汉", "武漢"), ("Chengdu", "成都", "成都"),
    ("Xi'an", "西安", "西安"), ("Changsha", "长沙", "長沙"), ("Zhengzhou", "郑州", "鄭州"),
    ("Jinan", "济南", "濟南"), ("Qingdao", "青岛", "青島"), ("Xiamen", "厦门", "廈門"),
    ("Fuzhou", "福州", "福州"), ("Hefei", "合肥", "合肥"), ("Kunming", "昆明", "昆明"),
    ("Nanning", "南宁", "南寧"), ("Harbin", "哈尔滨", "哈爾濱"), ("Changchun", "长春", "長春"),
    ("Shijiazhuang", "石家庄", "石家莊"), ("Taiyuan", "太原", "太原"), ("Nanchang", "南昌", "南昌"),
    ("Guiyang", "贵阳", "貴陽"), ("Lanzhou", "兰州", "蘭州"), ("Haikou", "海口", "海口"),
    ("Urumqi", "乌鲁木齐", "烏魯木齊"), ("Hohhot", "呼和浩特", "呼和浩特"),
    ("Yinchuan", "银川", "銀川"), ("Xining", "西宁", "西寧"), ("Lhasa", "拉萨", "拉薩"),
)


def _slug(en: str) -> str:
    return re.sub(r"[^a-z]+", "_", en.lower()).strip("_")


def _key(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


PROVINCES: tuple[Name, ...] = tuple(Name(_slug(e), s, t, e) for e, s, t in _PROVINCES)
CITIES: tuple[Name, ...] = tuple(Name(_slug(e), s, t, e) for e, s, t in _CITIES)
_PROVINCE_INDEX = {_key(n.en): n for n in PROVINCES} | {n.cmn: n for n in PROVINCES} | {
    n.yue: n for n in PROVINCES
}
_CITY_INDEX = {_key(n.en): n for n in CITIES} | {n.cmn: n for n in CITIES} | {
    n.yue: n for n in CITIES
}
# Administrative suffixes the geocoder's Chinese form carries ("广东省广州市", "新疆维吾尔自治区").
_ZH_ADMIN = (
    r"(?:壮族|壯族|回族|维吾尔|維吾爾)?(?:省|市|自治区|自治區|特别行政区|特別行政區)"
)
_ZH_PREFIX = re.compile("^" + _ZH_ADMIN)
_ZH_SUFFIX = re.compile(_ZH_ADMIN + "$")


def _split_zh(text: str) -> tuple[str, str]:
    """"广东省广州市" -> ("广东", "广州"); "北京市" -> ("北京", "")."""
    for name in sorted(_PROVINCE_INDEX, key=len, reverse=True):
        if not name.isascii() and text.startswith(name):
            rest = _ZH_PREFIX.sub("", text[len(name):])
            return name, _ZH_SUFFIX.sub("", rest)
    return _ZH_SUFFIX.sub("", text), ""


def region(value: object) -> list[Name]:
    """Province, then city when it is known and differs: "Guangzhou, Guangdong" -> 广东 广州.

    Accepts a `Region`-like object (attributes `province` and `city`), "City, Province",
    "Province", a city alone, or the geocoder's Chinese form ("广东省广州市").
    """
    province_text = getattr(value, "province", None)
    if isinstance(province_text, str):
        city_text = str(getattr(value, "city", "") or "")
        parts = [city_text, province_text]
    elif isinstance(value, str):
        text = value.strip()
        if text and not text.isascii():
            zh_prov, zh_city = _split_zh(text)
            parts = [zh_city, zh_prov]
        else:
            pieces = [p.strip() for p in text.split(",") if p.strip()]
            parts = ["", ""] if not pieces else (
                [pieces[0], pieces[-1]] if len(pieces) > 1 else [pieces[0], pieces[0]]
            )
    else:
        raise SpeechValueError(f"region must be a string or a Region, got {type(value).__name__}")
    city_raw, prov_raw = parts
    prov = _PROVINCE_INDEX.get(_key(prov_raw) if prov_raw.isascii() else prov_raw)
    city = _CITY_INDEX.get(_key(city_raw) if city_raw.isascii() else city_raw) if city_raw else None
    if prov is None and city is None:
        raise SpeechValueError(f"region {value!r} is not a known province or city")
    if prov is None:
        return [city] if city else []
    if city is None or city.slug == prov.slug:
        return [prov]
    return [prov, city]
