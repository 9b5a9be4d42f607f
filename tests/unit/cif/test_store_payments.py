"""Payments the hotline makes after the caller confirmed them: transfers, wealth purchases."""

import pytest

from ivr_engine.cif.errors import InvalidRequest
from ivr_engine.cif.seed import seed
from ivr_engine.cif.store import CifStore


async def test_debit_moves_money_refuses_overdraft_and_keeps_only_last4(tmp_path):
    store = await CifStore.open(tmp_path / "cif.sqlite3")
    try:
        await seed(store, customers=0)
        wang = await store.profile("13800138000")
        assert wang.customer is not None
        cid = wang.customer.id
        before = (await store.balance(cid))[0].balance_cents
        ref = await store.debit(cid, 10_050, kind="transfer", counterparty_last4="7788")
        assert ref.startswith("T-")
        assert (await store.balance(cid))[0].balance_cents == before - 10_050
        with pytest.raises(InvalidRequest, match="does not cover"):
            await store.debit(cid, before * 10, kind="wealth_purchase")
        assert (await store.balance(cid))[0].balance_cents == before - 10_050  # unchanged
        with pytest.raises(InvalidRequest, match="last 4"):
            await store.debit(cid, 100, kind="transfer", counterparty_last4="6222020012347788")
        with pytest.raises(InvalidRequest):
            await store.debit(cid, -5, kind="transfer")
    finally:
        await store.close()
    raw = (tmp_path / "cif.sqlite3").read_bytes()
    assert b"6222020012347788" not in raw
