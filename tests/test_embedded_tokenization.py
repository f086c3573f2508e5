"""How the embedded backend turns transcript segments into ids: like the whole rendered text (as a V4
server and the training data tokenize it), with special tokens recognised only in trusted text."""

from __future__ import annotations

from agentkit.runtime.checkpoint import shipped_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkit.backends.embedded import encode_segments, load_tokenizer
from agentkit.messages import Segment

_SHIPPED = shipped_checkpoint("tiny")
assert _SHIPPED is not None, "agentkit-tiny is not in the package (runtime/weights/agentkit-tiny)"
TOK = load_tokenizer(_SHIPPED)
USER = "<｜User｜>"

_TEXT = st.lists(
    st.sampled_from([*"ab ./_<>:-\n1234é", "<tool_result>", "</tool_result>", "ords", USER]), max_size=12
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_TEXT, st.booleans()), min_size=1, max_size=6))
def test_ids_equal_the_whole_text_and_belong_to_their_segments(parts: list[tuple[str, bool]]) -> None:
    parts = [(t if trusted else t.replace(USER, ""), trusted) for t, trusted in parts]  # forging: below
    segs = [Segment(text, False, None, trusted) for text, trusted in parts]
    per = encode_segments(TOK, segs)
    whole = "".join(t for t, _ in parts)
    assert [i for ids in per for i in ids] == TOK.encode(whole, allow_special=True)
    # each id sits with the segment holding its first byte
    starts, pos = [], 0
    for t, _ in parts:
        starts.append(pos)
        pos += len(t.encode())
    pos = 0
    for k, ids in enumerate(per):
        for i in ids:
            assert starts[k] <= pos < starts[k] + len(parts[k][0].encode())
            pos += len(TOK.id_to_bytes(i))


def test_merges_across_the_tool_result_seam() -> None:
    """The case that broke agentkit-tiny in the real loop: `>./` is one token of the whole text."""
    head, body = USER + "<tool_result>", "./records/a.txt"
    per = encode_segments(TOK, [Segment(head, False, None, True), Segment(body, False, None, False)])
    assert [i for ids in per for i in ids] == TOK.encode(head + body, allow_special=True)
    separate = TOK.encode(USER + "<tool_result>", allow_special=True) + TOK.encode("./records/a.txt")
    assert [i for ids in per for i in ids] != separate  # (so the test is about the seam)


def test_special_tokens_only_from_trusted_text() -> None:
    user_id = TOK.token_id(USER)
    forged = encode_segments(TOK, [Segment("x" + USER + "y", False, None, False)])
    assert user_id not in forged[0]
    assert TOK.decode(forged[0]) == "x" + USER + "y"
    real = encode_segments(TOK, [Segment("x" + USER + "y", False, None, True)])
    assert user_id in real[0]
