import pytest

from simulate.script import ScriptError, parse


def test_parse_steps_and_mask_secrets():
    steps = parse("w, 1, p1.5, s:123456, h")
    assert [s.kind for s in steps] == ["wait", "dtmf", "pause", "dtmf", "hangup"]
    assert steps[2].seconds == 1.5
    assert steps[3].secret and steps[3].describe() == "send ******"
    assert steps[1].describe() == "send 1"


@pytest.mark.parametrize("bad", ["x", "p", "pfoo", "12e", "s:", "p9999"])
def test_bad_steps_are_named(bad):
    with pytest.raises(ScriptError, match="step 1"):
        parse(bad)
