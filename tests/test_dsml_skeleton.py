"""The lxml skeleton: what the lexers hand to lxml, what comes back, and how lxml's errors read.

Whole-text parsing (both modes) reads the block structure off lxml's tree of a skeleton in which every
raw value is a placeholder. These tests pin the skeleton's shape, show that any name and any value
(control characters, CR LF, `]]>`, `&`, lone surrogates) survive the trip without passing through XML,
and that a skeleton lxml rejects, or a tree that breaks the block schema, is a `DSMLParseError` at the
offending tag's offset in the original text.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentkit.dsml import EOS, DSMLParseError, parse_completion
from agentkit.dsml.parse import _TolerantLexer
from agentkit.dsml.skeleton import Skeleton
from agentkit.dsml.strict import _Finder, _lex_block

D = "｜DSML｜"
MARK = "\ue000VALUE\ue000"  # never produced by the skeleton writer itself
ANY_TEXT = st.lists(
    st.one_of(
        st.text(max_size=3),
        st.sampled_from(["\x00", "\x01", "\r", "\r\n", "\ud800", "\ufffe", "&", "<", '"', "]]>", "｜", "\t"]),
    ),
    max_size=5,
).map("".join)


def _canonical(calls: str) -> str:
    return f"\n\n<{D}tool_calls>\n{calls}</{D}tool_calls>{EOS}"


def test_strict_lexer_writes_this_skeleton() -> None:
    text = _canonical(
        f'<{D}invoke name="run &amp; \x00">\n'
        f'<{D}parameter name="cmd" string="true">a\r\nb]]>&<</{D}parameter>\n'
        f'<{D}parameter name="n" string="false">[1]</{D}parameter>\n'
        f"</{D}invoke>\n"
    )
    sk = Skeleton()
    _lex_block(_Finder(text), 2, 2 + len(f"<{D}tool_calls"), sk)
    p1, p2 = text.index(f"<{D}parameter"), text.rindex(f"<{D}parameter")
    assert sk.text() == "\n".join(
        [
            "<completion>",
            f'<{D}tool_calls at="2">',
            f'<{D}invoke name-ref="0" at="21">',
            f'<{D}parameter name="cmd" string="true" at="{p1}"><value ref="1"/></{D}parameter>',
            f'<{D}parameter name="n" string="false" at="{p2}"><value ref="2"/></{D}parameter>',
            f"</{D}invoke>",
            f"</{D}tool_calls>",
            "</completion>",
        ]
    )
    assert sk.values == ["run &amp; \x00", "a\r\nb]]>&<", "[1]"]
    calls, torn = sk.build(strict=True)
    assert torn is None
    assert [(c.name, c.arguments) for c in calls] == [("run &amp; \x00", {"cmd": "a\r\nb]]>&<", "n": [1]})]
    assert parse_completion(text, "chat").tool_calls == calls


def test_tolerant_repairs_come_before_the_skeleton() -> None:
    """An invoke left open is closed by the repair layer, so lxml sees a well-formed block."""
    text = (
        '<|DSML|tool_calls>\n<|DSML|invoke name=“a”>\n<|DSML|parameter name="x">1</|DSML|parameter>\n'
        '<|DSML|invoke name="b">\n<|DSML|parameter name="y" string="true">cut'
    )
    lexer = _TolerantLexer("chat")
    lexer.feed(text)
    lexer.close()
    msg = lexer.message(len(text))
    b_at = text.index('<|DSML|invoke name="b"')
    x_at, y_at = text.index('<|DSML|parameter name="x"'), text.index('<|DSML|parameter name="y"')
    assert lexer._sk.text().splitlines()[1:] == [
        f'<{D}tool_calls at="0">',
        f'<{D}invoke name="a" at="19">',
        f'<{D}parameter name="x" string="true" at="{x_at}"><value ref="0"/></{D}parameter>',
        f"</{D}invoke>",
        f'<{D}invoke name="b" at="{b_at}" torn="1">',
        f'<{D}parameter name="y" string="true" at="{y_at}"><value ref="1"/></{D}parameter>',
        f"</{D}invoke>",
        f"</{D}tool_calls>",
        "</completion>",
    ]
    assert [(c.name, c.arguments) for c in msg.tool_calls] == [("a", {"x": "1"})]
    assert msg.torn_call is not None and msg.torn_call.arguments == {"y": "cut"}
    assert msg == parse_completion(text, "chat", strict=False)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(ANY_TEXT, st.dictionaries(ANY_TEXT, st.tuples(ANY_TEXT, st.booleans()), max_size=3)),
        max_size=3,
    )
)
def test_any_name_and_value_survive_without_passing_through_xml(
    invokes: list[tuple[str, dict[str, tuple[str, bool]]]],
) -> None:
    sk = Skeleton()
    sk.open_block(0)
    for i, (name, params) in enumerate(invokes):
        sk.open_invoke(name, i)
        for key, (value, _string) in params.items():
            sk.parameter(key, MARK + value, True, i)
        sk.close_invoke(i)
    sk.close_block(len(invokes))
    assert MARK not in sk.text()
    calls, torn = sk.build(strict=True)
    assert torn is None
    want = [(n, {k: MARK + v for k, (v, _s) in p.items()}) for n, p in invokes]
    assert [(c.name, c.arguments) for c in calls] == want


def _reject(build: object) -> DSMLParseError:
    sk = Skeleton()
    build(sk)  # type: ignore[operator]
    with pytest.raises(DSMLParseError) as info:
        sk.build(strict=False)
    return info.value


def test_lxml_syntax_errors_point_into_the_original_text() -> None:
    err = _reject(lambda sk: (sk.open_block(3), sk.open_invoke("f", 10), sk.close_block(50)))
    assert err.reason == (
        f"DSML block is not well-formed: Opening and ending tag mismatch: {D}invoke and {D}tool_calls"
    )
    assert err.position == 50
    err = _reject(lambda sk: (sk.open_block(3), sk.close_invoke(7), sk.close_block(9)))
    assert "mismatch" in err.reason and err.position == 7
    err = _reject(lambda sk: (sk.open_block(3), sk.open_invoke("f", 10)))
    assert err.reason.endswith(f"{D}invoke and the end of the output") and err.position == 10


def test_trees_that_break_the_block_schema_are_rejected() -> None:
    err = _reject(lambda sk: (sk.open_block(3), sk.parameter("k", "v", True, 9), sk.close_block(20)))
    assert "expected an invoke inside the tool call block" in err.reason and err.position == 9
    err = _reject(lambda sk: (sk.open_invoke("f", 4), sk.close_invoke(8)))
    assert "expected a tool call block" in err.reason and err.position == 4

    def torn_then_more(sk: Skeleton) -> None:
        sk.open_block(0)
        sk.open_invoke("a", 5, torn=True)
        sk.close_invoke(6)
        sk.open_invoke("b", 7)
        sk.close_invoke(8)
        sk.close_block(9)

    err = _reject(torn_then_more)
    assert "after the torn one" in err.reason and err.position == 7
    err = _reject(
        lambda sk: (sk.open_block(0), sk.open_invoke(None, 2), sk.close_invoke(3), sk.close_block(4))
    )
    assert "invoke without a name" in err.reason and err.position == 2


def test_strict_reports_an_earlier_invoke_s_bad_json_before_a_later_layout_error() -> None:
    first = f'<{D}invoke name="f">\n<{D}parameter name="a" string="false">[1,</{D}parameter>\n</{D}invoke>\n'
    text = _canonical(first + f'<{D}invoke nam="g">\n</{D}invoke>\n')
    with pytest.raises(DSMLParseError, match="not valid JSON") as info:
        parse_completion(text, "chat")
    assert info.value.position == text.index(f"<{D}invoke")
    with pytest.raises(DSMLParseError, match="invoke header"):
        parse_completion(_canonical(f'<{D}invoke nam="g">\n</{D}invoke>\n' + first), "chat")


def test_positions_stay_exact_past_libxml2_s_line_limit() -> None:
    """libxml2 stores element line numbers in 16 bits; positions come from the `at` attributes."""
    sk = Skeleton()
    sk.open_block(0)
    for i in range(22_000):  # 66,000 skeleton lines
        sk.open_invoke("f", i)
        sk.parameter("a", "1", True, i)
        sk.close_invoke(i)
    sk.parameter("k", "v", True, 123_456_789)
    sk.close_block(123_456_800)
    with pytest.raises(DSMLParseError, match="expected an invoke") as info:
        sk.build(strict=False)
    assert info.value.position == 123_456_789
