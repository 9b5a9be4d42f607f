import re
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr_engine.errors import FlowError
from ivr_engine.flow.loader import load_texts, raise_first
from ivr_engine.flow.model import CollectNode, MenuNode
from tests.unit.flow.flow_helpers import FakeCatalogue, errors_of, flows, load

MINIMAL = """\
flow: demo
start: hello
nodes:
  hello:
    type: play
    prompt: welcome
    next: bye
  bye:
    type: hangup
"""


def test_minimal_flow_loads_into_frozen_model() -> None:
    fs = flows(MINIMAL)
    flow = fs.flows["demo"]
    assert flow.start == "hello"
    assert flow.nodes["hello"].loc.line == 4
    with pytest.raises(AttributeError):
        flow.start = "bye"  # type: ignore[misc]
    with pytest.raises(TypeError):
        flow.nodes["x"] = flow.nodes["hello"]  # type: ignore[index]


def test_every_error_has_path_line_col_and_node() -> None:
    errs = errors_of(
        """\
        flow: demo
        start: hello
        nodes:
          hello:
            type: play
            prompt: welcome
            nxt: bye
          bye:
            type: hangup
        """
    )
    assert "main.yaml:5:5: error: node 'hello': node 'hello' needs 'next'" in errs
    assert (
        "main.yaml:7:5: error: node 'hello': "
        "unknown field 'nxt' in node 'hello' (did you mean 'next'?)" in errs
    )


def test_yaml_syntax_error_is_located() -> None:
    errs = errors_of("flow: demo\nnodes:\n  a: [1, 2\n")
    assert len(errs) == 1
    assert re.match(r"main\.yaml:\d+:\d+: error: YAML syntax: ", errs[0])


def test_duplicate_keys_are_errors() -> None:
    errs = errors_of(MINIMAL + "  hello:\n    type: hangup\n")
    assert any("main.yaml:10:3: error: duplicate key 'hello' (first at line 4)" in e for e in errs)


def test_aliases_are_refused() -> None:
    errs = errors_of(
        """\
        flow: demo
        start: a
        nodes:
          a: &x {type: hangup}
          b: *x
        """
    )
    assert any("aliases" in e for e in errs)


def test_unknown_node_type_and_wrong_types() -> None:
    errs = errors_of(
        """\
        flow: demo
        start: a
        nodes:
          a:
            type: menuu
          b:
            type: menu
            prompt: p
            options: {1: b}
            timeout: soon
            barge_in: maybe
            no_input: {max: 0, exit: b}
            no_match: {max: 2, exit: b}
        """
    )
    joined = "\n".join(errs)
    assert "unknown node type 'menuu' (did you mean 'menu'?" in joined
    assert "main.yaml:10:14: error: node 'b': expected a number of seconds, got 'soon'" in joined
    assert "expected true or false, got 'maybe'" in joined
    assert "expected a number of at least 1, got 0" in joined


def test_missing_target_with_suggestion() -> None:
    errs = errors_of(MINIMAL.replace("next: bye", "next: by"))
    assert any("target 'by' is not a node of this flow (did you mean 'bye'?)" in e for e in errs)


def test_unreachable_node() -> None:
    errs = errors_of(MINIMAL + "  orphan:\n    type: hangup\n")
    assert any(":10:3: error: node 'orphan': unreachable" in e for e in errs)


def test_inputs_need_no_input_and_no_match_exits() -> None:
    errs = errors_of(
        """\
        flow: demo
        start: m
        nodes:
          m:
            type: menu
            prompt: p
            options: {1: end}
          end: {type: hangup}
        """
    )
    assert any("a menu needs a 'no_input' exit" in e for e in errs)
    assert any("a menu needs a 'no_match' exit" in e for e in errs)


def test_loop_without_key_press_needs_a_bound() -> None:
    looping = """\
        flow: demo
        start: a
        vars: {n: {type: int, default: 0}}
        nodes:
          a: {type: set, vars: {n: n + 1}, next: b}
          b:
            type: switch
            cases: [{when: n > 100, goto: end}]
            default: a
          end: {type: hangup}
        """
    errs = errors_of(looping)
    assert any("loop with no bound: a -> b" in e for e in errs)
    bounded = looping.replace("next: b}", "next: b, max_visits: 5, on_max_visits: end}")
    assert errors_of(bounded) == []


def test_silence_loop_through_a_menu_is_unbounded() -> None:
    # no-input exit leads back into the menu: silence alone would go round for ever
    errs = errors_of(
        """\
        flow: demo
        start: m
        nodes:
          m:
            type: menu
            prompt: p
            options: {1: end}
            no_input: {max: 2, exit: sorry}
            no_match: {max: 2, exit: end}
          sorry: {type: play, prompt: s, next: m}
          end: {type: hangup}
        """
    )
    assert any("loop with no bound" in e for e in errs)


def test_key_press_loops_are_fine() -> None:
    assert (
        errors_of(
            """\
        flow: demo
        start: m
        nodes:
          m:
            type: menu
            prompt: p
            options: {1: info, 2: end}
            no_input: {max: 2, exit: end}
            no_match: {max: 2, exit: end}
          info: {type: play, prompt: i, next: m}
          end: {type: hangup}
        """
        )
        == []
    )


CATALOGUE = FakeCatalogue(
    {
        "welcome": {"cmn": "欢迎", "yue": "歡迎", "en": "Welcome"},
        "menu": {"cmn": "菜单", "en": "Menu"},
        "readback": {"cmn": "x", "yue": "x", "en": "x"},
    },
    {"readback": {"amount": "money", "card": "masked"}},
)


def test_prompts_checked_in_every_language_of_the_flow() -> None:
    text = """\
        flow: demo
        languages: [cmn, yue, en]
        start: a
        nodes:
          a: {type: play, prompt: [welcome, menu, nosuch], next: b}
          b: {type: hangup}
        """
    errs = errors_of(text, catalogue=CATALOGUE)
    assert any("prompt 'menu' has no text in yue" in e for e in errs)
    assert any("prompt 'nosuch' is not in the catalogue" in e for e in errs)
    assert not any("'welcome'" in e for e in errs)
    # a flow that only speaks cmn and en is fine with 'menu'
    errs = errors_of(text.replace("[cmn, yue, en]", "[cmn, en]"), catalogue=CATALOGUE)
    assert not any("'menu'" in e for e in errs)


SENSITIVE = """\
    flow: demo
    languages: [cmn]
    start: pin
    vars:
      pin: {type: str, sensitive: true}
      shown: str
    sources:
      cif.check:
        params: {pin: {type: str, sensitive: true}}
        fields: {ok: bool}
    nodes:
      pin:
        type: collect
        prompt: welcome
        var: pin
        sensitive: true
        max_digits: 6
        no_input: {max: 1, exit: end}
        no_match: {max: 1, exit: end}
        next: say
      say: {type: play, prompt: PROMPT, next: check}
      check:
        type: lookup
        source: cif.check
        params: {pin: pin}
        next: end
        error: end
      end: {type: hangup}
    """


@pytest.mark.parametrize(
    ("prompt", "error"),
    [
        ("{prompt: readback, vars: {amount: 1, card: pin}}", None),
        (
            "{prompt: readback, vars: {amount: len(pin), card: '1'}}",
            "would speak sensitive 'len(pin)'",
        ),
        ("{say: masked, value: pin}", None),
        ("{say: digits, value: pin}", "with say digits; only 'masked' may"),
        ("{prompt: readback, vars: {amount: 1, card: mask(pin)}}", None),
    ],
)
def test_sensitive_values_are_only_spoken_masked(prompt: str, error: str | None) -> None:
    errs = errors_of(SENSITIVE.replace("PROMPT", prompt), catalogue=CATALOGUE)
    if error is None:
        assert errs == []
    else:
        assert any(error in e for e in errs), errs


def test_sensitive_values_cannot_leak_into_plain_variables_queue_data_or_audit() -> None:
    base = textwrap.dedent(SENSITIVE).replace("PROMPT", "welcome")
    leak_set = base.replace(
        "next: check}", "next: copy}\n  copy: {type: set, vars: {shown: pin}, next: check}"
    )
    assert any(
        "reads a sensitive value; 'shown' is not sensitive" in e for e in errors_of(leak_set)
    )
    ok_set = leak_set.replace("vars: {shown: pin}", "vars: {shown: mask(pin)}")
    assert not [e for e in errors_of(ok_set) if "sensitive" in e]
    leak_queue = base.replace(
        "  end: {type: hangup}", "  end:\n    type: queue\n    queue: q\n    data: {p: pin}"
    )
    assert "type: queue" in leak_queue
    assert any("queue data 'p' reads a sensitive value" in e for e in errors_of(leak_queue))
    plain_collect = base.replace("    sensitive: true\n    max_digits", "    max_digits")
    assert any("mark the collect 'sensitive: true'" in e for e in errors_of(plain_collect))


def test_menu_depth_warns_past_the_limit() -> None:
    menus = ["flow: deep", "start: m1", "nodes:"]
    for i in range(1, 6):
        nxt = f"m{i + 1}" if i < 5 else "end"
        menus += [
            f"  m{i}:",
            "    type: menu",
            "    prompt: p",
            f"    options: {{1: {nxt}, 2: end}}",
            "    no_input: {max: 1, exit: end}",
            "    no_match: {max: 1, exit: end}",
        ]
    menus.append("  end: {type: hangup}")
    result = load("\n".join(menus) + "\n")
    assert not result.errors
    warned = [d.node for d in result.warnings if "levels deep" in d.message]
    assert warned == ["m4", "m5"]
    result = load_texts([("deep.yaml", "\n".join(menus) + "\n")], max_menu_depth=4)
    assert [d.node for d in result.warnings if "levels deep" in d.message] == ["m5"]


SUB = """\
    flow: pin
    params: {who: str}
    returns: {tries: int}
    start: done
    nodes:
      done:
        type: switch
        cases: [{when: "who == 'x'", goto: ok}]
        default: bad
      ok: {type: return, exit: verified, values: {tries: 1}}
      bad: {type: return, exit: locked}
    """


def test_subflow_calls_are_checked_against_the_callee() -> None:
    caller = """\
        flow: main
        start: s
        vars: {n: int, label: str}
        nodes:
          s:
            type: subflow
            flow: pin
            params: {who: 1, nosuch: 2}
            outputs: {label: tries}
            exits: {verified: end, other: end}
          end: {type: hangup}
        """
    errs = errors_of(caller, SUB)
    joined = "\n".join(errs)
    assert "parameter 'who' of 'pin' is str, got int" in joined
    assert "flow 'pin' has no parameter 'nosuch'" in joined
    assert "'label' is str but 'pin' returns int" in joined
    assert "can return with exit 'locked'; map it under 'exits'" in joined
    assert "never returns with exit 'other'" in joined


def test_recursive_subflows_are_refused() -> None:
    a = """\
        flow: a
        start: s
        nodes:
          s: {type: subflow, flow: b, next: r}
          r: {type: return}
        """
    errs = errors_of(a, a.replace("flow: a", "flow: b").replace("flow: b, next", "flow: a, next"))
    assert any("subflows call each other in a cycle: a -> b" in e for e in errs)


def test_on_hangup_cannot_talk_to_the_caller() -> None:
    errs = errors_of(MINIMAL.replace("start: hello", "start: hello\non_hangup: hello"))
    assert any("runs after hang-up" in e for e in errs)


def test_raise_first_gives_a_flow_error_with_location() -> None:
    with pytest.raises(FlowError) as exc:
        raise_first(load(MINIMAL.replace("type: hangup", "type: hangupp")))
    assert exc.value.path == "main.yaml" and exc.value.line == 9 and exc.value.node == "bye"


def test_input_defaults_and_fields() -> None:
    fs = flows(
        """\
        flow: demo
        start: c
        vars: {card: {type: str, sensitive: true}}
        nodes:
          c:
            type: collect
            prompt: p
            var: card
            sensitive: true
            min_digits: 16
            max_digits: 19
            validate: {luhn: true}
            no_input: {max: 2, exit: m}
            no_match: {max: 3, exit: m}
            next: m
          m:
            type: menu
            prompt: [long, more]
            reprompt: short
            options: {1: end, "#": end}
            no_input: {max: 3, prompts: [[ni1, again], ni2], exit: end}
            no_match: {max: 3, exit: end}
          end: {type: hangup}
        """
    )
    c = fs.flows["demo"].nodes["c"]
    m = fs.flows["demo"].nodes["m"]
    assert isinstance(c, CollectNode) and isinstance(m, MenuNode)
    assert c.sensitive and c.validation.luhn and c.terminator == "#" and not c.hotkeys
    assert [p.prompt for p in m.prompt] == ["long", "more"]
    assert [[p.prompt for p in seq] for seq in m.no_input.prompts] == [["ni1", "again"], ["ni2"]]
    assert m.no_input.prompt_for(5)[0].prompt == "ni2"
    assert set(m.options) == {"1", "#"} and m.hotkeys and m.barge_in


def test_schedule_hours_and_holidays_are_validated() -> None:
    errs = errors_of(
        """\
        flow: demo
        start: s
        nodes:
          s:
            type: schedule
            timezone: Mars/Olympus
            hours: {mon-fri: "08:00-20:00", sat: "20:00-08:00", funday: "09:00-10:00"}
            holidays: [2026-10-01, 02-30]
            open: end
            closed: end
          end: {type: hangup}
        """
    )
    joined = "\n".join(errs)
    assert "unknown time zone 'Mars/Olympus'" in joined
    assert "start must be before end" in joined
    assert "bad day spec 'funday'" in joined
    assert "bad holiday '02-30'" in joined
    assert "2026-10-01" not in joined


# ------------------------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fuzz_any_text_gives_a_model_or_diagnostics(text: str) -> None:
    result = load_texts([("fuzz.yaml", text)])
    assert result.flows is not None or result.errors


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100),
    st.text(max_size=12),
    st.sampled_from(
        ["menu", "play", "collect", "a", "b", "end", "x > 1", "{x}", "'q'", "#", "08:00-20:00"]
    ),
)
_keys = st.sampled_from(
    [
        "flow",
        "start",
        "nodes",
        "type",
        "next",
        "prompt",
        "options",
        "no_input",
        "no_match",
        "max",
        "exit",
        "vars",
        "var",
        "cases",
        "when",
        "goto",
        "default",
        "a",
        "b",
        "end",
        "1",
        "sources",
        "params",
        "fields",
        "hours",
        "queue",
        "priority",
        "data",
        "sensitive",
        "max_digits",
        "validate",
        "pattern",
        "hotkeys",
    ]
)
_docs = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=6)),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_docs)
def test_fuzz_structured_documents_never_raise(doc: object) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    result = load_texts([("fuzz.yaml", text)])
    assert result.flows is not None or result.errors


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_real_flow_never_raises(data: st.DataObject) -> None:
    lines = textwrap.dedent(MINIMAL).splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = data.draw(st.text(alphabet=" :-{}[]#&*!|>'\"abnexty0123", max_size=20))
    result = load_texts([("fuzz.yaml", "\n".join(lines))])
    assert result.flows is not None or result.errors


def test_sensitive_values_only_go_to_sensitive_source_parameters() -> None:
    text = textwrap.dedent(SENSITIVE).replace("PROMPT", "welcome")
    plain = text.replace("params: {pin: {type: str, sensitive: true}}", "params: {pin: str}")
    assert "params: {pin: str}" in plain
    assert any(
        "parameter 'pin' of 'cif.check' is not declared sensitive" in e for e in errors_of(plain)
    )


def test_unread_variables_are_warned_about() -> None:
    result = load(MINIMAL.replace("start: hello", "start: hello\nvars: {spare: int}"))
    assert not result.errors
    assert [d.render() for d in result.warnings if "never read" in d.message] == [
        "main.yaml:3:8: warning: variable 'spare' is never read"
    ]
