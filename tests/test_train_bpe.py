"""Byte-level BPE: round trips, V4 pre-tokenizer, special tokens, and agreement with HF `tokenizers`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from agentkit.dsml.tokens import ASSISTANT, BOS, DSML, EOS, THINK_END, THINK_START, USER
from agentkit.train.bpe import BPETokenizer, TokenizerError, pretokenize, train_bpe

PIECES = [
    "hello",
    " world",
    "file_name.txt",
    "  ",
    "\n\n",
    "\n",
    "123456",
    "42",
    "数据",
    "テスト",
    "x=1+2;",
    "é",
    "naïve",
    "😀",
    "\t",
    "  \n ",
    "foo.bar",
    "'s",
    "ABC",
    "<tool_result>",
    "</tool_result>",
    USER,
    ASSISTANT,
    THINK_START,
    THINK_END,
    DSML,
    EOS,
    " -3.5",
    "[exit code: 0]",
    '{"a": 1}',
]


def _soup(pieces: list[str], max_pieces: int) -> st.SearchStrategy[str]:
    """Concatenations of corpus-like pieces, so merges and special tokens actually fire."""
    return st.lists(st.sampled_from(pieces), max_size=max_pieces).map("".join)


def _corpus(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(5, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return train_bpe(_corpus(0, 400), 400)


@pytest.fixture(scope="module")
def hf(tok: BPETokenizer, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    d = tmp_path_factory.mktemp("tok")
    tok.save(d)
    return Tokenizer.from_file(str(d / "tokenizer.json"))


def test_training_is_deterministic(tok: BPETokenizer) -> None:
    again = train_bpe(_corpus(0, 400), 400)
    assert again.merges == tok.merges and again.added == tok.added
    assert len(tok.merges) > 100


def test_special_tokens_at_their_roles(tok: BPETokenizer) -> None:
    assert tok.encode(BOS) == [0] and tok.encode(EOS) == [1]
    for t in (USER, ASSISTANT, THINK_START, THINK_END, DSML):
        ids = tok.encode(t)
        assert len(ids) == 1 and ids[0] >= tok.n_bpe
    # a special token is never split across or merged with its neighbours
    ids = tok.encode(f"ab{THINK_START}cd")
    assert tok.added[THINK_START] in ids
    assert tok.decode(ids[: ids.index(tok.added[THINK_START])]) == "ab"


def test_merged_token_id_is_its_rank(tok: BPETokenizer) -> None:
    for rank, (a, b) in enumerate(tok.merges):
        assert tok.token_bytes[3 + 256 + rank] == a + b


@settings(max_examples=150, deadline=None)
@given(_soup([*PIECES, "a", "b", " ", "7", "\u0301", "\r"], 40))
def test_round_trip_on_piece_soup(tok: BPETokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_round_trip_any_unicode(tok: BPETokenizer, text: str) -> None:
    assert tok.decode(tok.encode_ordinary(text)) == text


@settings(max_examples=150, deadline=None)
@given(_soup([*PIECES, "a", " ", "9", "中"], 30))
def test_same_ids_as_hf_tokenizers(tok: BPETokenizer, hf: Tokenizer, text: str) -> None:
    """Differential: the saved tokenizer.json read by HF `tokenizers` encodes exactly as we do."""
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids


# Characters assigned in this Python's Unicode database: newer code points are classified differently by
# the `regex` module and by the Rust tables inside `tokenizers` (a Unicode-version skew, not a bug).
ASSIGNED = st.characters(blacklist_categories=("Cs", "Cn"))


@settings(max_examples=200, deadline=None)
@given(st.text(ASSIGNED, max_size=60))
def test_pretokenizer_matches_hf_pipeline(hf: Tokenizer, text: str) -> None:
    assert hf.pre_tokenizer is not None
    theirs = [p for p, _ in hf.pre_tokenizer.pre_tokenize_str(text)]
    ours = ["".join(_BYTE_SYMBOL[b] for b in w.encode("utf-8")) for w in pretokenize(text)]
    assert ours == theirs


def test_pretokenizer_examples() -> None:
    assert pretokenize("1234567") == ["123", "456", "7"]
    assert pretokenize("abc  5") == ["abc", "  ", "5"]  # isolated steps: no lookahead across the digit
    assert pretokenize("你好world") == ["你好", "world"]


def test_save_load_round_trip(tok: BPETokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    back = BPETokenizer.load(tmp_path)
    assert back.merges == tok.merges and back.added == tok.added
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["bos_token"] == BOS and cfg["eos_token"] == EOS and cfg["add_bos_token"] is False
    text = "".join(_corpus(5, 3))
    assert back.encode(text) == tok.encode(text)


def test_bad_files_are_refused(tok: BPETokenizer, tmp_path: Path) -> None:
    data = tok.to_hf_json()
    data["model"]["type"] = "WordPiece"  # type: ignore[index]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="not BPE"):
        BPETokenizer.load(tmp_path)
    data = tok.to_hf_json()
    vocab = data["model"]["vocab"]  # type: ignore[index]
    first = next(k for k, v in vocab.items() if v == 300)
    vocab[first] = 301
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="layout"):
        BPETokenizer.load(tmp_path)
    with pytest.raises(TokenizerError, match="not in this vocabulary"):
        tok.decode([tok.vocab_size + 5])


def _byte_symbols() -> dict[int, str]:
    from agentkit.train.bpe import bytes_to_unicode

    return bytes_to_unicode()


_BYTE_SYMBOL = _byte_symbols()


@pytest.fixture(scope="module")
def runtime_tok(tok: BPETokenizer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from agentkit.runtime.tokenizer import Tokenizer as RuntimeTokenizer

    d = tmp_path_factory.mktemp("rt")
    tok.save(d)
    return RuntimeTokenizer.from_file(d)


@settings(max_examples=150, deadline=None)
@given(_soup([*PIECES, "a", " ", "9", "中", "  ", "\n"], 30))
def test_runtime_tokenizer_reads_our_file_identically(tok: BPETokenizer, runtime_tok: Any, text: str) -> None:
    """Differential against the runtime's tiktoken-based loader (what the embedded backend uses)."""
    assert runtime_tok.encode(text, allow_special=True) == tok.encode(text)
    assert runtime_tok.encode(text) == tok.encode_ordinary(text)
    assert runtime_tok.decode(tok.encode(text)) == text
