"""`cif import`: good rows load, bad rows are reported with line, column and reason."""

from __future__ import annotations

from pathlib import Path

from ivr_engine.cif.importer import import_csv
from ivr_engine.cif.model import ServiceTier
from ivr_engine.cif.seed import luhn_complete
from ivr_engine.cif.store import CifStore
from ivr_engine.cli import main

KEY = b"test-pan-key-0123456789abcdef!!"
CARD_A = luhn_complete("622202123456780")
CARD_B = luhn_complete("622202123456781")
BAD_LUHN = CARD_A[:-1] + str((int(CARD_A[-1]) + 1) % 10)

HEADER = (
    "cif_no,surname,surname_zh,title,tier,preferred_language,home_province,home_city,phones,"
    "pin,card_number,card_kind,credit_limit,account_number,balance\n"
)
ROWS = [
    # line 2: good, Cantonese preference, two phones
    f"C1,Huang,黄,ms,vip,yue,广东,Foshan,13611112222;+8602088889999,,{CARD_A},credit,"
    "80000.00,6222020000123456789,1200.50",
    # line 3: bad tier
    "C2,Xu,徐,mr,gold,,Beijing,,13611113333,,,,,,",
    # line 4: bad phone
    "C3,Sun,孙,mr,standard,,,,12345,,,,,,",
    # line 5: card fails Luhn
    f"C4,Ma,马,mr,standard,,,,13611114444,,{BAD_LUHN},debit,,,",
    # line 6: duplicate customer number of line 2
    "C1,Zhu,朱,ms,standard,,,,13611115555,,,,,,",
    # line 7: good, city only -> province from the city table; no card
    "C5,Hu,胡,mr,standard,,,Shenzhen,13611116666,,,,,,",
    # line 8: PIN not digits (the value must not be echoed)
    "C6,Guo,郭,mr,standard,,,,13611117777,98x7,,,,,",
    # line 9: phone already on line 2
    "C7,He,何,mr,group,,,,136-1111-2222,,,,,,",
    # line 10: good, with a PIN
    f"C8,Lin,林,ms,group,en,Shanghai,Shanghai,13611118888,2468,{CARD_B},debit,,,",
    # line 11: unknown province
    "C9,Luo,罗,mr,standard,,Atlantis,,13611119999,,,,,,",
    # line 12: amount with 3 decimals
    f"C10,Liang,梁,mr,standard,,,,13611110000,,{luhn_complete('622202123456782')},credit,"
    "1.005,,",
]


def write(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    p = tmp_path / "customers.csv"
    p.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    return p


async def test_good_and_bad_rows(tmp_path: Path) -> None:
    csv_path = write(tmp_path, ROWS)
    async with await CifStore.open(tmp_path / "cif.sqlite3", pan_key=KEY) as store:
        result = await import_csv(store, csv_path)
        got = [(e.line, e.column) for e in result.errors]
        assert got == [
            (3, "tier"), (4, "phones"), (5, "card_number"), (6, "cif_no"), (8, "pin"),
            (9, "phones"), (11, "home_province"), (12, "credit_limit"),
        ], [str(e) for e in result.errors]
        assert result.loaded == 3 and not result.ok
        assert "duplicate of line 2" in str(result.errors[3])
        assert "98x7" not in " ".join(str(e) for e in result.errors)
        assert BAD_LUHN not in " ".join(str(e) for e in result.errors)

        huang = await store.lookup_by_caller("02088889999")
        assert huang is not None and huang.customer is not None
        assert huang.customer.home_province == "Guangdong"
        assert huang.service_tier is ServiceTier.VIP
        assert str(huang.language) == "yue"
        assert huang.cards[0].credit_limit_cents == 8_000_000
        hu = await store.lookup_by_caller("13611116666")
        assert hu is not None and hu.customer is not None
        assert hu.customer.home_province == "Guangdong"
        lin = await store.lookup_by_caller("13611118888")
        assert lin is not None and lin.customer is not None
        assert await store.verify_pin(lin.customer.id, "2468")
        assert (await store.card_by_number(CARD_B)) is not None

        # Importing the same file again: everything already present is refused per row.
        again = await import_csv(store, csv_path)
        assert again.loaded == 0
        assert (2, "cif_no") in [(e.line, e.column) for e in again.errors]


async def test_header_problems(tmp_path: Path) -> None:
    async with await CifStore.open(tmp_path / "cif.sqlite3", pan_key=KEY) as store:
        bad = write(tmp_path, ["X1,Wu,mr,standard,13611110001"],
                    header="cif_no,surname,title,tier,phone\n")
        result = await import_csv(store, bad)
        assert [(e.line, e.column) for e in result.errors] == [(1, "phone"), (1, "phones")]
        empty = tmp_path / "empty.csv"
        empty.write_bytes(b"")
        assert (await import_csv(store, empty)).errors[0].line == 1
        latin = tmp_path / "latin.csv"
        latin.write_bytes(HEADER.encode() + "C1,M\xfcller,,mr,standard".encode("latin-1"))
        res = await import_csv(store, latin)
        assert res.errors[0].line == 2 and "UTF-8" in res.errors[0].reason


def test_cli_exit_codes(tmp_path: Path, capsys: object, monkeypatch: object) -> None:
    db = tmp_path / "cli.sqlite3"
    good = tmp_path / "good.csv"
    good.write_text(HEADER + ROWS[0] + "\n", encoding="utf-8")
    assert main(["cif", "import", "--path", str(db), str(good)]) == 0
    bad = write(tmp_path, ROWS[1:3])
    assert main(["cif", "import", "--path", str(db), str(bad)]) == 1
    out = capsys.readouterr()  # type: ignore[attr-defined]
    assert "line 2: tier:" in out.err and "line 3: phones:" in out.err
    assert main(["cif", "show", "--path", str(db), "13611112222"]) == 0
    out = capsys.readouterr()  # type: ignore[attr-defined]
    assert "黄女士" in out.out and CARD_A not in out.out and "****" + CARD_A[-4:] in out.out
    assert main(["cif", "show", "--path", str(db), "075582345678"]) == 1
