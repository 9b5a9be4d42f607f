"""Requirement expressions: parsing without eval, normalisation, errors that name the column."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acd.errors import RequirementError
from acd.requirement import parse


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("yue >= 3 and cards", "cards and yue >= 3"),
        ("cards and yue>=3", "cards and yue >= 3"),
        ("yue > 2 AND cards >= 1", "cards and yue >= 3"),
        ("a >= 3 or a >= 5", "a >= 3"),
        ("(a >= 2 and b) or a >= 5", "a >= 5 or (a >= 2 and b)"),
        ("not mandarin", "not mandarin"),
        ("a != 3", "a <= 2 or a >= 4"),
        ("not (a and b)", "not a or not b"),
        ("any", "any"),
        ("a == 10", "a == 10"),
        ("a < 1", "not a"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert parse(text).text == canonical


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("", 1, "empty"),
        ("yue >=", 7, "expected a level"),
        ("yue >= 11", 8, "out of range"),
        ("YUE", 1, "lower case"),
        ("a and or b", 7, "expected a skill"),
        ("a $ b", 3, "unexpected character"),
        ("(a", 3, "missing ')'"),
        ("a)", 2, "unexpected ')'"),
        ("__import__('os')", 12, "unexpected character"),
    ],
)
def test_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(RequirementError) as info:
        parse(text)
    assert info.value.column == column
    assert fragment in str(info.value)


SKILLS = ["a", "b", "c"]
atoms = st.builds(
    lambda s, op, lv: f"{s} {op} {lv}",
    st.sampled_from(SKILLS),
    st.sampled_from([">=", ">", "<=", "<", "==", "!="]),
    st.integers(0, 10),
) | st.sampled_from(SKILLS)


def exprs() -> st.SearchStrategy[str]:
    return st.recursive(
        atoms,
        lambda inner: st.one_of(
            st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
            st.builds(lambda a, b: f"({a}) or ({b})", inner, inner),
            st.builds(lambda a: f"not ({a})", inner),
        ),
        max_leaves=6,
    )


def _python(text: str, skills: dict[str, int]) -> bool:
    """An independent evaluation: rewrite to Python over a dict (test oracle only)."""
    import re

    src = re.sub(r"\b([a-c])\b(?!\s*[<>=!])", r"(\1 >= 1)", text)
    return bool(eval(src, {}, {s: skills.get(s, 0) for s in SKILLS}))  # noqa: S307


@given(exprs(), st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 10)))
def test_normal_form_evaluates_like_the_expression(text: str, skills: dict[str, int]) -> None:
    req = parse(text)
    assert req.matches(skills) == _python(text, skills)
    # The canonical text parses back to the same requirement.
    assert parse(req.text) == req
