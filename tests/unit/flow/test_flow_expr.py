import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr_engine.flow.expr import ExprError, ExprRuntimeError, Scope, VarInfo, coerce, compile_expr

SCOPE = Scope(
    {
        "n": VarInfo("int"),
        "amount": VarInfo("num"),
        "name": VarInfo("str"),
        "flag": VarInfo("bool"),
        "due": VarInfo("date"),
        "call.date": VarInfo("date"),
        "cust.tier": VarInfo("str"),
        "pin": VarInfo("str", sensitive=True),
    },
    {"prio": ("int", {"vip": 10, "group": 8}, 1)},
)
ENV = {
    "n": 7,
    "amount": Decimal("1234.50"),
    "name": "Wang",
    "flag": True,
    "due": dt.date(2026, 11, 28),
    "call.date": dt.date(2026, 11, 25),
    "cust.tier": "vip",
    "pin": "123456",
}


def ev(src: str) -> object:
    return compile_expr(src, SCOPE)(ENV)


@pytest.mark.parametrize(
    ("src", "want"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("n % 4", 3),
        ("-n + 10", 3),
        ("7 / 2", Decimal("3.5")),
        ("amount > 1000 and not flag == false", True),
        ("n >= 7 or 1 / 0 > 1", True),  # short-circuit: the division never runs
        ("name == 'Wang'", True),
        ('name + "!"', "Wang!"),
        ("cust.tier in ['vip', 'group']", True),
        ("cust.tier not in ['vip']", False),
        ("'an' in name", True),
        ("prio[cust.tier]", 10),
        ("prio['nobody']", 1),
        ("len(name)", 4),
        ("days_until(due)", 3),
        ("if(flag, 'a', 'b')", "a"),
        ("if(n > 100, 1, 2.5)", Decimal("2.5")),
        ("str(amount)", "1234.50"),
        ("int('42') + 1", 43),
        ("mask('6222021234567890')", "****7890"),
        ("max(n, 3)", 7),
        ("startswith(name, 'Wa')", True),
    ],
)
def test_evaluates(src: str, want: object) -> None:
    assert ev(src) == want


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("nosuch > 1", "unknown variable 'nosuch'"),
        ("nam == 'x'", "did you mean 'name'"),
        ("n + 'x'", "needs numbers"),
        ("name > 3", "cannot compare str with int"),
        ("flag and 1", "needs bool operands"),
        ("n and flag", "needs bool operands"),
        ("len(n)", "argument 1 must be str"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("__import__('os')", "unknown function '__import__'"),
        ("name.__class__", "unknown variable"),
        ("1 +", "unexpected 'end of expression'"),
        ("(1", "expected ')'"),
        ("n = 1", "unexpected character '='"),
        ("[]", "empty list"),
        ("['a', 1]", "mixes"),
        ("prio[n]", "map keys are str"),
        ("if(n, 1, 2)", "argument 1 must be bool"),
        ("if(flag, 1, 'x')", "branches differ"),
    ],
)
def test_rejects_with_a_clear_message(src: str, message: str) -> None:
    with pytest.raises(ExprError) as exc:
        compile_expr(src, SCOPE)
    assert message in exc.value.message


def test_error_offset_points_at_the_problem() -> None:
    with pytest.raises(ExprError) as exc:
        compile_expr("n > 1 and nosuch", SCOPE)
    assert exc.value.offset == 10


def test_wanted_type_is_enforced() -> None:
    with pytest.raises(ExprError, match="expected a bool expression, got int"):
        compile_expr("n + 1", SCOPE, want="bool")
    assert compile_expr("n", SCOPE, want="num").type == "int"  # an int is a num


def test_sensitivity_taints_through_everything_but_mask() -> None:
    assert compile_expr("pin", SCOPE).sensitive
    assert compile_expr("len(pin) + 1", SCOPE).sensitive
    assert compile_expr("if(flag, pin, name)", SCOPE).sensitive
    assert compile_expr("'x' + pin", SCOPE).sensitive
    assert not compile_expr("mask(pin)", SCOPE).sensitive
    assert compile_expr("pin == '1' and flag", SCOPE).names == {"pin", "flag"}


def test_runtime_errors_are_flow_errors_not_python_ones() -> None:
    with pytest.raises(ExprRuntimeError, match="division by zero"):
        ev("amount / (n - 7)")
    with pytest.raises(ExprRuntimeError, match="cannot convert"):
        ev("int(name)")
    with pytest.raises(ExprRuntimeError) as exc:
        ev("int(pin + 'x')")
    assert "123456" not in str(exc.value)


def test_coerce() -> None:
    assert coerce("12.30", "num") == Decimal("12.30")
    assert coerce(3, "num") == Decimal(3)
    assert coerce("2026-11-28", "date") == dt.date(2026, 11, 28)
    assert coerce(None, "str") == ""
    assert coerce("yes", "bool") is True
    with pytest.raises(ExprRuntimeError):
        coerce("soon", "date")
    with pytest.raises(ExprRuntimeError):
        coerce([1], "bool")


@settings(max_examples=400, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(
            list(
                "n amount name flag pin due ()[]'\"+-*/%<>=!.,0123456789"
                " and or not in if len mask prio"
            )
        ),
        max_size=40,
    )
)
def test_any_text_compiles_or_raises_expr_error(src: str) -> None:
    try:
        e = compile_expr(src, SCOPE)
    except ExprError:
        return
    try:
        e(ENV)
    except ExprRuntimeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_unicode_never_crashes(src: str) -> None:
    try:
        compile_expr(src, SCOPE)
    except ExprError:
        pass
