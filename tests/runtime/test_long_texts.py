"""Texts far over max_seq_length are cut before tokenizing (runtime/tokenize.py), and nothing changes: the
same token ids as tokenizing the whole text, for each pre-tokenizer kind and both truncation sides, and the
same embeddings as sentence-transformers."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed import Encoder
from onnxembed.manifest import Manifest
from onnxembed.runtime.tokenize import CHARS_PER_TOKEN, CUT_MARGIN_TOKENS, TOKENIZER_FILE, TextTokenizer
from tests.conftest import CORPUS, LONG_TEXT, QUERY_PROMPTS, Replica, exported

WORDS = " ".join(CORPUS).split()
SEPARATORS = [" ", " ", " ", "  ", "\n", "\t", " \n ", " " * 700, "\u3000", " \u0301", "中", "語\u0301", "。"]
IDEOGRAPHS = "短文本中日本語漢字𠀋"


def _long_texts(seed: int, count: int) -> list[str]:
    """Texts of 2-12k characters: corpus words joined by single spaces, newlines, tabs, long runs of spaces
    (no tokens), combining marks after a space; some start or end with spaces."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts = []
        while sum(map(len, parts)) < rng.randint(2_000, 12_000):
            parts += [rng.choice(WORDS), rng.choice(SEPARATORS)]
        texts.append(rng.choice(["", " ", " " * 3000]) + "".join(parts) + rng.choice(["", " ", "x" * 900]))
    return texts


def _cjk_texts(seed: int, count: int) -> list[str]:
    """Texts of 3-10k characters with no spaces: ideographs, a Latin word or a combining mark now and then."""
    rng = random.Random(seed)
    pieces = [*IDEOGRAPHS, *IDEOGRAPHS, "word", "\u0301", "。", "한국어"]
    return ["".join(rng.choices(pieces, k=rng.randint(3_000, 10_000))) for _ in range(count)]


EDGE_TEXTS = [
    LONG_TEXT,
    LONG_TEXT * 4,
    " " * 20_000 + LONG_TEXT,  # nothing but spaces where the first piece is
    LONG_TEXT + " " * 20_000,
    LONG_TEXT.replace(" ", " " * 40),
    "x" * 30_000,  # no space at all: kept whole
    "x" * 30_000 + " " + LONG_TEXT,  # the first space is far past the budget
    "短" * 20_000,
    "a" + " " * 30_000,
    "short",
]


def _byte_level_bpe(path: Path) -> None:
    """A RoBERTa-style byte-level BPE tokenizer (a space belongs to the word after it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=500, special_tokens=["<s>", "</s>"]))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 1), ("<s>", 0), trim_offsets=True)
    tokenizer.save(str(path / TOKENIZER_FILE))


def _spaceless_bpe(path: Path) -> None:
    """A Gemma-style BPE: spaces become ▁ in the normalizer, no pre-tokenizer, so merges may cross spaces and
    no text is ever cut."""
    from tokenizers import Tokenizer, models, normalizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=500, special_tokens=["<bos>", "<eos>"]))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>", special_tokens=[("<bos>", 0), ("<eos>", 1)]
    )
    tokenizer.save(str(path / TOKENIZER_FILE))


def _tokenizers(export: Path, tmp_path: Path, kind: str) -> tuple[Path, Manifest]:
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "bpe":
        _byte_level_bpe(folder)
    elif kind == "spaceless-bpe":
        _spaceless_bpe(folder)
    else:
        shutil.copy(export / TOKENIZER_FILE, folder / TOKENIZER_FILE)
    return folder, Manifest.read(export)


def test_cuts_follow_the_ideographs_the_normalizer_isolates() -> None:
    """A text is cut after a character only where BERT's normalizer makes it a word of its own; one it does
    not isolate (U+2B820-U+2B91F, in Google BERT's ranges, not in tokenizers') would split a word."""
    from tokenizers.normalizers import BertNormalizer

    from onnxembed.runtime.tokenize import _CJK_IDEOGRAPH

    normalizer = BertNormalizer(clean_text=False, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    points = [point for point in range(0x3000, 0x40000) if not 0xD800 <= point < 0xE000]
    wrong = [
        hex(point)
        for point in points
        if bool(_CJK_IDEOGRAPH.fullmatch(chr(point))) != (normalizer.normalize_str(chr(point)) == f" {chr(point)} ")
    ]
    assert not wrong, wrong[:10]


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "bpe", "spaceless-bpe"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_seq_length", [8, 128])
def test_cut_texts_give_the_same_token_ids(
    kind: str,
    side: str,
    max_seq_length: int,
    chinese_bert: Replica,
    xlm_roberta: Replica,
    exports_dir: Path,
    tmp_path: Path,
) -> None:
    export = exported(xlm_roberta if kind == "unigram" else chinese_bert, exports_dir)
    folder, manifest = _tokenizers(export, tmp_path, kind)
    manifest = dataclasses.replace(manifest, max_seq_length=max_seq_length, truncation_side=side)
    tokenizer = TextTokenizer(folder, manifest)
    prompt = QUERY_PROMPTS["query"]
    texts = EDGE_TEXTS + _long_texts(max_seq_length, 30) + _cjk_texts(max_seq_length, 10)
    texts += [prompt + text for text in texts[::3]] + [prompt * 50 + "tail"]
    whole = tokenizer._encode_batch(texts, add_special_tokens=True)  # the path without cutting
    cut = tokenizer.encode(texts)
    for index, (expected, actual) in enumerate(zip(whole, cut, strict=True)):
        assert actual.ids == expected.ids, index
        assert actual.type_ids == expected.type_ids, index
    assert (len(tokenizer._cut(texts[:1])[0]) < len(texts[0])) == (kind != "spaceless-bpe")  # it did cut
    # text without spaces is cut only where BERT's normalizer makes each ideograph a word
    chinese = "短" * 20_000
    assert (len(tokenizer._cut([chinese])[0]) < len(chinese)) == (kind == "wordpiece")
    counter = TextTokenizer(folder, dataclasses.replace(manifest, max_seq_length=2**31 - 1))
    exact = [len(encoding.ids) for encoding in counter.encode(texts)]
    assert tokenizer.over_limit(texts) == [count > max_seq_length for count in exact]


@pytest.mark.parametrize("kind", ["spaceless-bpe", "bpe"])
def test_texts_that_cannot_be_cut_are_held_truncated(
    kind: str, chinese_bert: Replica, exports_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text with nowhere to cut is tokenized whole, but with at most LONG_GROUP_CHARS of others at a time,
    and only its kept tokens are held afterwards: a body of them costs one group's full encodings, not all."""
    from onnxembed.runtime import tokenize

    folder, manifest = _tokenizers(exported(chinese_bert, exports_dir), tmp_path, kind)
    tokenizer = TextTokenizer(folder, dataclasses.replace(manifest, max_seq_length=32))
    monkeypatch.setattr(tokenize, "LONG_GROUP_CHARS", 25_000)
    calls: list[int] = []
    encode_batch = tokenizer._encode_batch

    def counting(items: list[str], add_special_tokens: bool) -> list[object]:
        calls.append(sum(map(len, items)))
        return encode_batch(items, add_special_tokens=add_special_tokens)

    texts = ["x" * 10_000, "short", "ab" * 6_000, *("y" * 9_000 for _ in range(6)), "短" * 11_000]
    whole = encode_batch(texts, add_special_tokens=True)
    monkeypatch.setattr(tokenizer, "_encode_batch", counting)
    encodings = tokenizer.encode(texts)
    assert [encoding.ids for encoding in encodings] == [encoding.ids for encoding in whole]
    assert len(encodings[0]) == 32
    assert all(isinstance(encoding, tokenize.Truncated) for index, encoding in enumerate(encodings) if index != 1)
    assert len(calls) >= 4 and max(calls) < 25_000 + 12_000, calls  # a group ends once past the bound


def test_model_without_a_limit_keeps_the_whole_text(chinese_bert: Replica, exports_dir: Path) -> None:
    export = exported(chinese_bert, exports_dir)
    manifest = dataclasses.replace(Manifest.read(export), max_seq_length=2**31 - 1)
    texts = [LONG_TEXT * 8]
    assert TextTokenizer(export, manifest)._cut(texts) is texts
    assert len(texts[0]) > 2**10 * CHARS_PER_TOKEN


def _left_truncating_copies(replica: Replica, export: Path, tmp_path: Path) -> tuple[Path, Path]:
    source, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(replica.path, source)
    shutil.copytree(export, out)
    config_file = source / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "truncation_side": "left"}))
    manifest = json.loads((out / "onnxembed.json").read_text())
    (out / "onnxembed.json").write_text(json.dumps({**manifest, "truncation_side": "left"}))
    return source, out


@pytest.mark.parametrize("side", ["right", "left"])
def test_embeddings_match_sentence_transformers(
    side: str, chinese_bert: Replica, exports_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    source, export = chinese_bert.path, exported(chinese_bert, exports_dir)
    if side == "left":
        source, export = _left_truncating_copies(chinese_bert, export, tmp_path)
    texts = EDGE_TEXTS + _long_texts(7, 12)
    expected = SentenceTransformer(str(source), device="cpu").encode(texts, batch_size=8)
    np.testing.assert_allclose(Encoder(export).encode(texts, batch_size=8), expected, atol=1e-4, rtol=0)


def test_prompts_match_sentence_transformers(roberta_lora: Replica, exports_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = EDGE_TEXTS[:6] + _long_texts(11, 6)
    model = SentenceTransformer(str(roberta_lora.path), device="cpu")
    encoder = Encoder(exported(roberta_lora, exports_dir))
    for name in roberta_lora.prompts:
        expected = model.encode(texts, prompt_name=name, batch_size=8)
        np.testing.assert_allclose(encoder.encode(texts, prompt_name=name, batch_size=8), expected, atol=1e-4, rtol=0)


def test_only_tokenizers_that_split_at_spaces_are_cut() -> None:
    from onnxembed.runtime.tokenize import _splits_at_spaces

    assert _splits_at_spaces({"type": "BertPreTokenizer"})
    assert _splits_at_spaces({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True})
    assert _splits_at_spaces({"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "Metaspace"}]})
    # Gemma's and Llama's SentencePiece-BPE files have no pre-tokenizer: BPE may merge across spaces.
    assert not _splits_at_spaces(None)
    assert not _splits_at_spaces({"type": "ByteLevel", "use_regex": False})
    assert not _splits_at_spaces({"type": "Metaspace", "replacement": "▁", "split": False})
    assert not _splits_at_spaces({"type": "Split", "pattern": {"Regex": "x"}, "behavior": "Isolated"})


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "bpe", "spaceless-bpe"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_seq_length", [9, 64])
def test_long_pairs_keep_what_the_tokenizer_keeps(
    kind: str, side: str, max_seq_length: int, chinese_bert: Replica, exports_dir: Path, tmp_path: Path
) -> None:
    """Pairs of long texts (cut, or tokenized whole and cut longest first by TextTokenizer itself) give the token
    and type ids of the tokenizer's own truncation, which sentence-transformers' CrossEncoder uses: one long
    text, two, equal ones, one token apart, odd and even budgets, either side."""
    folder, manifest = _tokenizers(exported(chinese_bert, exports_dir), tmp_path, kind)
    manifest = dataclasses.replace(manifest, max_seq_length=max_seq_length, truncation_side=side)
    tokenizer = TextTokenizer(folder, manifest)
    rng = random.Random(7)
    # just past what counts as long: the reference (the tokenizer's own truncation) pairs every overflowing piece
    # of one text with every one of the other, which for longer texts takes gigabytes (what this guards against)
    size = (max_seq_length + CUT_MARGIN_TOKENS) * CHARS_PER_TOKEN + 100
    words = [text[:size] for text in _long_texts(11, 3)]
    spaceless = [text[: size // 3] for text in _cjk_texts(12, 2)]
    pool = [*words, *spaceless, "short", LONG_TEXT[:size], "x" * (size // 3)]
    pairs = [(rng.choice(pool), rng.choice(pool)) for _ in range(24)]
    pairs += [(words[0], words[0]), (words[0], words[0] + " x"), (words[0] + " x", words[0]), ("a", words[1])]
    expected = tokenizer._encode_batch(pairs, add_special_tokens=True)  # the tokenizer's own truncation
    truncated: list[Any] = []
    own = tokenizer._truncated
    tokenizer._truncated = lambda item: truncated.append(item) or own(item)  # type: ignore[method-assign]
    actual = tokenizer.encode(pairs)
    assert any(isinstance(item, tuple) for item in truncated)  # some pairs were cut longest first here
    for index, (mine, theirs) in enumerate(zip(actual, expected, strict=True)):
        assert (mine.ids, mine.type_ids) == (theirs.ids, theirs.type_ids), index
        assert len(mine) <= max_seq_length
