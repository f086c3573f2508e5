"""The V4 tokenizer against HF `tokenizers` on random multilingual text; decode and streaming properties."""

from __future__ import annotations

import base64
import json
import random
import tempfile
import unicodedata
from pathlib import Path

import pytest
import regex
import tiktoken
import tokenizers
from agentkit.runtime.tokenizer import (
    BOS,
    EOS,
    V4_ADDED_TOKENS,
    V4_SPLIT_PATTERNS,
    V4_TIKTOKEN_PATTERN,
    AddedToken,
    Tokenizer,
    TokenizerError,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

CHAT_TOKENS = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜", "<｜latest_reminder｜>"]

# Building blocks for random text: every class the pre-tokenizer treats differently.
WORDS = ["hello", "World", "naïve", "Ünïcödé", "the", "quick", "tool_calls", "def", "x", "ABC", "ß"]
ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "αβγδεζηθλμπσωΩΔ",
    "абвгдежзийклмнопрстуфхцчшщыэюяЖ",
    "אבגדהוזחטיכלמנסעפצקרשת",
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "कखगघचछजझटठडढणतथदधनपफबभमयरलवशसह\u093e\u093f\u0940\u094d",
    "กขฃคฅฆงจฉชซฌญฎฏฐ\u0e31\u0e34\u0e35",
    "가나다라마바사아자차카타파하한국어",
    "一二三四五六七八九十中文字符测试你好推理答案龥",
    "ぁあぃいうえおかがきぎくぐ\u3099\u309a゛゜ゟ",
    "゠ァアィイゥウカガキギクグーヽヾヿ・",
    "\u0301\u0308\u0327\u20dd",  # combining marks (alone or after letters)
]
DIGITS = "0123456789٠١٢٣٤٥٦٧٨٩０１２３４５６７８９²³½ⅫⅣ①"
PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~、。「」『』—…‘’“”¿¡«»§¶"
SYMBOLS = "€£¥±×÷∑∫→⇒∞≤≥♥★✓©®™°"
EMOJI = ["😀", "🚀", "👍🏽", "👨\u200d👩\u200d👧", "🇯🇵", "❤️", "🧑\u200d💻", "🤖"]
SPACES = [
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n ",
    "\u00a0",
    "\u3000",
    "\u2028",
    "\x0b",
    "\x0c",
    "\x85",
]
CONTROL = ["\x00", "\x01", "\x1b", "\x7f", "\u200b", "\u200d", "\ufeff", "\x1c", "\ue000"]


def random_char(rng: random.Random) -> str:
    """A random assigned code point. Characters assigned after Unicode 14 (Python 3.11's tables) are
    avoided: regex engines ship different Unicode versions, so their classes disagree on new characters."""
    while True:
        c = chr(
            rng.choice([rng.randint(0x20, 0x2FF), rng.randint(0x370, 0x1FFF), rng.randint(0x3000, 0x30FF)])
        )
        if unicodedata.category(c) != "Cn":
            return c


def random_text(rng: random.Random, specials: list[str]) -> str:
    parts: list[str] = []
    for _ in range(rng.randint(1, 14)):
        kind = rng.randrange(10)
        if kind == 0:
            parts.append(rng.choice(WORDS))
        elif kind == 1:
            alpha = rng.choice(ALPHABETS)
            parts.append("".join(rng.choice(alpha) for _ in range(rng.randint(1, 8))))
        elif kind == 2:
            parts.append(
                "".join(
                    rng.choice(DIGITS[:10] if rng.random() < 0.6 else DIGITS)
                    for _ in range(rng.randint(1, 9))
                )
            )
        elif kind == 3:
            parts.append("".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 3))))
        elif kind == 4:
            parts.append(rng.choice(SYMBOLS) + rng.choice(EMOJI) * rng.randint(0, 2))
        elif kind == 5:
            parts.append(rng.choice(SPACES) * rng.randint(1, 3))
        elif kind == 6:
            parts.append(rng.choice(CONTROL))
        elif kind == 7 and specials:
            parts.append(rng.choice(specials))
        elif kind == 8:
            parts.append(random_char(rng))
        else:
            parts.append(" " + rng.choice(WORDS))
    return "".join(parts)


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [random_text(rng, []) for _ in range(n)]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE trained by HF `tokenizers` with the V4 pre-tokenizer and V4 added tokens."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(p), behavior="isolated", invert=False)
            for p in V4_SPLIT_PATTERNS
        ]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000,
        special_tokens=[BOS, EOS, "<｜▁pad▁｜>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(3000, seed=1), trainer)
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in CHAT_TOKENS])
    d = tmp_path_factory.mktemp("hf")
    tok.save(str(d / "tokenizer.json"))
    return d


@pytest.fixture(scope="module")
def strings() -> list[str]:
    rng = random.Random(12345)
    return [random_text(rng, [*CHAT_TOKENS, BOS, EOS]) for _ in range(10_000)]


@pytest.fixture(scope="module")
def hf(hf_dir: Path) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def tok(hf_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(hf_dir)


def hf_ids(hf: tokenizers.Tokenizer, strings: list[str]) -> list[list[int]]:
    return [e.ids for e in hf.encode_batch(strings, add_special_tokens=False)]


def first_mismatch(a: list[list[int]], b: list[list[int]], strings: list[str]) -> str:
    for s, x, y in zip(strings, a, b, strict=True):
        if x != y:
            return f"{s!r}: {x} != {y}"
    return ""


# ------------------------------------------------------------------------------------------------ vs HF


def test_ids_equal_hf_on_random_strings(tok: Tokenizer, hf: tokenizers.Tokenizer, strings: list[str]) -> None:
    assert tok._fast  # the V4 file takes the single-pattern tiktoken path
    ours = [tok.encode(s, allow_special=True) for s in strings]
    theirs = hf_ids(hf, strings)
    assert ours == theirs, first_mismatch(ours, theirs, strings)


def test_generic_path_equals_hf(hf_dir: Path, hf: tokenizers.Tokenizer, strings: list[str]) -> None:
    base = Tokenizer.from_file(hf_dir)
    slow = Tokenizer(base.merges, base.vocab, base.added, base.splits, fast_path=False)
    assert not slow._fast
    sample = strings[:3000]
    ours = [slow.encode(s, allow_special=True) for s in sample]
    assert ours == hf_ids(hf, sample), first_mismatch(ours, hf_ids(hf, sample), sample)


def ordinary_text(s: str) -> str:
    for t in [*CHAT_TOKENS, BOS, EOS]:
        s = s.replace(t, " ")
    return s


def hf_pieces(hf: tokenizers.Tokenizer, s: str) -> list[str]:
    """HF's own pre-tokenizer output, mapped back from byte-level symbols to text."""
    return [bytes(UNSYM[c] for c in piece).decode() for piece, _ in hf.pre_tokenizer.pre_tokenize_str(s)]


def _unsym_table() -> dict[str, int]:
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in keep}
    n = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + n)] = b
            n += 1
    return table


UNSYM = _unsym_table()


def test_single_pattern_pieces_equal_hf_pretokenizer(
    tok: Tokenizer, hf: tokenizers.Tokenizer, strings: list[str]
) -> None:
    combined = regex.compile(V4_TIKTOKEN_PATTERN, flags=regex.V1)
    for s in strings:
        ordinary = ordinary_text(s)
        want = hf_pieces(hf, ordinary)
        assert "".join(want) == ordinary
        assert combined.findall(ordinary) == want, repr(ordinary)
        assert tok.pieces(ordinary) == want, repr(ordinary)
    # the pitfalls: whitespace before a digit/CJK character (the end of a third-step piece), gaps of
    # unmatched characters, and CJK runs re-split by the third step (kana symbols and middle dots)
    assert combined.findall("a  1") == hf_pieces(hf, "a  1") == ["a", "  ", "1"]
    assert combined.findall("x\x00\x01y中") == ["x", "\x00", "\x01y", "中"]
    assert (
        combined.findall("お゜いア・イ") == hf_pieces(hf, "お゜いア・イ") == ["お", "゜", "いア", "・", "イ"]
    )


def test_tiktoken_engine_splits_like_hf(hf: tokenizers.Tokenizer, strings: list[str]) -> None:
    """tiktoken's regex engine on the folded pattern, seen through a vocabulary that makes pieces visible:
    every HF piece (and every pair of neighbouring pieces) is reachable as one token, so a split that is
    coarser or finer than HF's changes the ids."""
    sample = [ordinary_text(s) for s in strings[:2000]]
    pieces = [[p.encode() for p in hf_pieces(hf, s)] for s in sample]
    tokens: set[bytes] = set()
    for ps in pieces:
        for i, p in enumerate(ps):
            for t in (p, p + ps[i + 1]) if i + 1 < len(ps) else (p,):
                tokens.update(t[:k] for k in range(2, len(t) + 1))
    ranks = {bytes([b]): b for b in range(256)}
    for t in sorted(tokens, key=lambda t: (len(t), t)):
        ranks.setdefault(t, len(ranks))
    enc = tiktoken.Encoding("pieces", pat_str=V4_TIKTOKEN_PATTERN, mergeable_ranks=ranks, special_tokens={})
    for s, ps in zip(sample, pieces, strict=True):
        assert enc.encode_ordinary(s) == [ranks[p] for p in ps], repr(s)


def test_specials_as_plain_text_when_not_allowed(tok: Tokenizer, hf: tokenizers.Tokenizer) -> None:
    text = "<｜User｜>hi<think>x</think>"
    ids = tok.encode(text)
    user = tok.token_id("<｜User｜>")
    assert user not in ids and tok.decode(ids) == text
    # the plain-text encoding is the one HF gives to each ordinary fragment of the same characters
    assert ids == hf.encode("<｜", add_special_tokens=False).ids[:0] + tok.encode(text, allow_special=set())
    only_user = tok.encode(text, allow_special={"<｜User｜>"})
    assert only_user[0] == user and tok.token_id("<think>") not in only_user
    assert tok.decode(only_user) == text
    with pytest.raises(TokenizerError, match="not added tokens"):
        tok.encode(text, allow_special={"<nope>"})


def test_added_tokens_and_flags(tok: Tokenizer) -> None:
    assert tok.bos_id == 0 and tok.eos_id == 1
    assert tok.special_ids == frozenset({0, 1, 2})
    ids = tok.encode(f"{BOS}<｜User｜>hi<｜Assistant｜><think>a</think>b{EOS}", allow_special=True)
    assert ids[0] == 0 and ids[-1] == 1
    # skip_special drops BOS/EOS only; the chat tokens are not special (like V4)
    assert tok.decode(ids, skip_special=True) == "<｜User｜>hi<｜Assistant｜><think>a</think>b"


# ------------------------------------------------------------------------------------------------ decode


def test_decode_round_trip(tok: Tokenizer, strings: list[str]) -> None:
    for s in strings:
        assert tok.decode(tok.encode(s, allow_special=True)) == s
        assert tok.decode(tok.encode(s)) == s


def test_stream_decoder_random_splits(tok: Tokenizer, strings: list[str]) -> None:
    rng = random.Random(7)
    for s in strings[:3000]:
        ids = tok.encode(s, allow_special=True)
        dec = tok.stream_decoder()
        chunks: list[str] = []
        i = 0
        while i < len(ids):
            n = rng.randint(1, 4)
            chunks.append(dec.push(ids[i : i + n]) if n > 1 else dec.push(ids[i]))
            assert len(dec.pending) <= 3
            i += n
        chunks.append(dec.flush())
        for c in chunks:
            assert "\ufffd" not in c  # never a broken character from a split sequence
            c.encode("utf-8")  # valid: no lone surrogates
        assert "".join(chunks) == s


def test_multibyte_character_split_across_tokens(tok: Tokenizer) -> None:
    byte_ids = [tok.vocab[bytes([b])] for b in "🚀".encode()]
    assert tok.decode(byte_ids) == "🚀"
    dec = tok.stream_decoder()
    assert [dec.push(i) for i in byte_ids] == ["", "", "", "🚀"]
    # an incomplete tail at the end of the stream becomes U+FFFD, exactly as one-shot decode does
    dec = tok.stream_decoder()
    assert dec.push(byte_ids[:2]) == "" and dec.pending == "🚀".encode()[:2]
    assert dec.flush() == "\ufffd" == tok.decode(byte_ids[:2])
    # invalid bytes in the middle are replaced, never passed through
    bad = [tok.vocab[b"\xff"], tok.vocab[b"a"]]
    assert tok.decode(bad) == "\ufffda"
    dec = tok.stream_decoder()
    assert dec.push(bad) + dec.flush() == "\ufffda"


def test_decode_unknown_id(tok: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="id 999999 is not in this tokenizer"):
        tok.decode([5, 999999])


# ----------------------------------------------------------------------------------------- save / formats


def test_save_round_trip_and_hf_reads_it(tok: Tokenizer, tmp_path: Path, strings: list[str]) -> None:
    tok.save(tmp_path / "t")
    again = Tokenizer.from_file(tmp_path / "t")
    hf2 = tokenizers.Tokenizer.from_file(str(tmp_path / "t" / "tokenizer.json"))
    sample = strings[:2000]
    ours = [again.encode(s, allow_special=True) for s in sample]
    assert ours == [tok.encode(s, allow_special=True) for s in sample]
    assert ours == hf_ids(hf2, sample), first_mismatch(ours, hf_ids(hf2, sample), sample)
    cfg = json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == BOS and cfg["eos_token"] == EOS and cfg["add_bos_token"] is False


def test_tiktoken_file_round_trip(tok: Tokenizer, tmp_path: Path, strings: list[str]) -> None:
    path = tok.save_tiktoken(tmp_path / "v.tiktoken")
    added = [AddedToken(t.content, t.id, t.special) for t in tok.added]
    tk = Tokenizer.from_tiktoken(path, added)
    assert tk.merges == tok.merges  # the merges recovered from ranks are the trained ones
    sample = strings[:2000]
    assert [tk.encode(s, allow_special=True) for s in sample] == [
        tok.encode(s, allow_special=True) for s in sample
    ]
    assert Tokenizer.from_file(tmp_path).vocab == tok.vocab  # a directory with only a .tiktoken file


def test_v4_added_token_ids(tmp_path: Path) -> None:
    # a toy byte-level vocab (256 bytes + two merges) with V4's added tokens at V4's ids
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b + 3}" for b in range(256)]
    lines += ["aGk= 259", "aGlp 260"]  # "hi", "hii"
    (tmp_path / "toy.tiktoken").write_text("\n".join(lines) + "\n")
    tk = Tokenizer.from_tiktoken(tmp_path / "toy.tiktoken")
    ids = tk.encode(
        "<｜User｜>hii<｜Assistant｜><think>hi</think>hi<｜end▁of▁sentence｜>", allow_special=True
    )
    assert ids == [128803, 260, 128804, 128821, 259, 128822, 259, 1]
    assert {t.content: tk.token_id(t.content) for t in V4_ADDED_TOKENS} == {
        t.content: t.id for t in V4_ADDED_TOKENS
    }
    assert tk.token_id("｜DSML｜") == 128825 and tk.n_vocab == 129280
    tk.save(tmp_path / "saved")
    assert Tokenizer.from_file(tmp_path / "saved").encode("hiihi", allow_special=True) == [260, 259]


def test_bad_files(tmp_path: Path, hf_dir: Path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json")
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        Tokenizer.from_file(tmp_path / "bad.json")
    data = json.loads((hf_dir / "tokenizer.json").read_text())
    for change, msg in [
        ({"model": {**data["model"], "type": "Unigram"}}, "is not BPE"),
        ({"normalizer": {"type": "NFKC"}}, "normalizer 'NFKC'"),
        ({"pre_tokenizer": {"type": "Whitespace"}}, "must end with ByteLevel"),
        ({"model": {**data["model"], "merges": [*data["model"]["merges"], "a zz"]}}, "not in the vocab"),
    ]:
        (tmp_path / "x.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(TokenizerError, match=msg):
            Tokenizer.from_file(tmp_path / "x.json")
    (tmp_path / "y.tiktoken").write_text("not base64!! 1\n")
    with pytest.raises(TokenizerError, match=r"malformed \.tiktoken"):
        Tokenizer.from_file(tmp_path / "y.tiktoken")


def test_loads_the_project_trained_bpe(tmp_path: Path) -> None:
    """The shipped tiny model's tokenizer comes from agentkit.train.bpe: same ids as that trainer's codec."""
    from agentkit.train.bpe import train_bpe

    trained = train_bpe(corpus(400, seed=9), 300)
    trained.save(tmp_path)
    ours = Tokenizer.from_file(tmp_path)
    assert ours._fast and ours._rank_to_id is None
    rng = random.Random(11)
    specials = [t.content for t in ours.added]
    for _ in range(1000):
        s = random_text(rng, specials)
        assert ours.encode(s, allow_special=True) == trained.encode(s), repr(s)


def test_fast_path_with_literal_control_characters(hf_dir: Path, tmp_path: Path, strings: list[str]) -> None:
    """Tokenizer files may write CR/LF in the regex classes as the characters themselves (a JSON escape),
    as llama.cpp's copy of the DeepSeek-V3 pre-tokenizer does: the same regex, so the same fast path."""
    data = json.loads((hf_dir / "tokenizer.json").read_text())
    for step in data["pre_tokenizer"]["pretokenizers"][:3]:
        step["pattern"]["Regex"] = step["pattern"]["Regex"].replace(r"\r", "\r").replace(r"\n", "\n")
    assert "\r" in data["pre_tokenizer"]["pretokenizers"][2]["pattern"]["Regex"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    ours = Tokenizer.from_file(tmp_path)
    assert ours._fast
    hf2 = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    sample = strings[:2000]
    got = [ours.encode(s, allow_special=True) for s in sample]
    assert got == hf_ids(hf2, sample), first_mismatch(got, hf_ids(hf2, sample), sample)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_tokenizer_json_gives_tokenizer_error(
    hf_dir: Path, tmp_path: Path, data: st.DataObject
) -> None:
    """Any field of tokenizer.json replaced by a wrong-typed value: TokenizerError or a working tokenizer."""
    doc = json.loads((hf_dir / "tokenizer.json").read_text())
    paths = [
        ("model",),
        ("model", "type"),
        ("model", "vocab"),
        ("model", "merges"),
        ("added_tokens",),
        ("pre_tokenizer",),
        ("pre_tokenizer", "pretokenizers"),
        ("normalizer",),
    ]
    path = data.draw(st.sampled_from(paths))
    junk = data.draw(
        st.sampled_from([None, 5, "x", [], {}, [1, 2], {"a": 1}, "[unclosed", [["a", "b", "c"]]])
    )
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = junk
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    (d / "tokenizer.json").write_text(json.dumps(doc))
    try:
        tk = Tokenizer.from_file(d)
    except TokenizerError:
        return
    assert tk.decode(tk.encode("hello 123 你好")) == "hello 123 你好"


def test_encode_batch_equals_encode(tok: Tokenizer, strings: list[str]) -> None:
    sample = strings[:1000]
    for allow in (True, False):
        assert tok.encode_batch(sample, allow_special=allow) == [
            tok.encode(s, allow_special=allow) for s in sample
        ]


def test_ids_not_in_merge_order(hf_dir: Path, tmp_path: Path, strings: list[str]) -> None:
    """A vocab whose ids do not rise with merge order (rank != id): merges still decide, ids map back."""
    data = json.loads((hf_dir / "tokenizer.json").read_text())
    added = {t["content"] for t in data["added_tokens"]}
    names = [k for k in data["model"]["vocab"] if k not in added]
    ids = [data["model"]["vocab"][k] for k in names]
    random.Random(3).shuffle(ids)
    data["model"]["vocab"].update(dict(zip(names, ids, strict=True)))
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    ours = Tokenizer.from_file(tmp_path)
    assert ours._rank_to_id is not None  # the remapping path
    hf2 = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    sample = strings[:2000]
    got = [ours.encode(s, allow_special=True) for s in sample]
    assert got == hf_ids(hf2, sample), first_mismatch(got, hf_ids(hf2, sample), sample)
    assert ours.encode_batch(sample[:50], allow_special=True) == got[:50]
    assert all(ours.decode(g) == s for g, s in zip(got, sample, strict=True))
