"""Text to padded numpy arrays with the `tokenizers` library, as sentence-transformers tokenizes.

In scope: loading tokenizer.json with the model's own max_seq_length (not the padding and truncation
baked into tokenizer.json), padding a batch to its longest text, prompt lengths, and (query, document)
pairs for rerankers, which a CrossEncoder tokenizes as ``tokenizer(pairs, truncation="longest_first")``:
the pair template of tokenizer.json, the two texts cut together to max_seq_length.
Not in scope: choosing batches (batching.py) or running the model (engine.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, cast

import numpy as np
from tokenizers import Encoding, Tokenizer

from onnxembed.manifest import Manifest, ModelLoadError

TOKENIZER_FILE = "tokenizer.json"
# A text longer than this many characters per token of max_seq_length is tokenized from a prefix (a suffix
# for left truncation) first; the budget doubles while the piece yields too few tokens (e.g. runs of spaces).
CHARS_PER_TOKEN = 8
# Tokens a cut piece keeps beyond max_seq_length, so the cut is never next to a token that truncation keeps.
CUT_MARGIN_TOKENS = 16
# Texts still long after cutting (no space to cut at, or a tokenizer that merges across spaces) are tokenized
# in groups of about this many characters: a full encoding costs ~95 bytes a character (byte-level BPE on
# text without spaces), all of it kept in its overflow until the encoding is dropped.
LONG_GROUP_CHARS = 1_000_000
# Pre-tokenizers that end every word at a space (ByteLevel only with its regex; Metaspace only when it splits).
_SPACE_SPLITTERS = {"Whitespace", "WhitespaceSplit", "BertPreTokenizer", "ByteLevel", "Metaspace"}
# The CJK ideograph ranges BERT's normalizer (handle_chinese_chars) surrounds with spaces: each is a word of
# its own, so text without spaces (Chinese, Japanese kanji) can be cut right after one. tokenizers' ranges,
# not Google BERT's: they skip U+2B820-U+2B91F, and a cut after one of those would split a word.
_CJK_IDEOGRAPH = re.compile(
    "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b920-\U0002ceaf\U0002f800-\U0002fa1f]"
)
# Normalizers that act on one character at a time, so a cut between two characters cannot change either.
_PER_CHARACTER_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"}
# One input of the tokenizer: a text, or a (query, document) pair that a reranker reads together.
Item = str | tuple[str, str]


@dataclass(frozen=True)
class Truncated:
    """What padding reads of an Encoding (token ids, type ids, how many texts), without the Encoding's
    overflow: the tokens truncation dropped, which a tokenizers Encoding keeps until it is freed."""

    ids: list[int]
    type_ids: list[int]
    n_sequences: int

    @classmethod
    def of(cls, encoding: Encoding) -> Truncated:
        return cls(encoding.ids, encoding.type_ids, encoding.n_sequences)

    def __len__(self) -> int:
        return len(self.ids)


class TextTokenizer:
    """Tokenizes text into the (batch, seq) int64 arrays the exported graph takes."""

    def __init__(self, model_dir: Path, manifest: Manifest) -> None:
        path = model_dir / TOKENIZER_FILE
        if not path.is_file():
            raise ModelLoadError(f"tokenizer file {path} does not exist")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on a corrupt file
            raise ModelLoadError(f"tokenizer file {path} is corrupt: {error}") from error
        # tokenizer.json may carry a fixed padding/truncation (all-MiniLM-L6-v2 pads and truncates at 128):
        # drop it, pad to the longest text in each batch ourselves, truncate at the model's max_seq_length.
        tokenizer.no_padding()
        tokenizer.enable_truncation(
            max_length=manifest.max_seq_length, strategy="longest_first", direction=manifest.truncation_side
        )
        self._tokenizer = tokenizer
        self._pad_token_id = manifest.pad_token_id
        self._max_length = manifest.max_seq_length
        self._left_padding = manifest.padding_side == "left"
        self._special_ids = {
            token_id for token_id, token in tokenizer.get_added_tokens_decoder().items() if token.special
        }
        self._prompt_lengths: dict[str, int] = {}
        # Single texts get one type id per template piece; when a probe's are all 0, every text's are, and
        # padding skips reading them (a Python list per text). Offsets are never used: skip computing them.
        self._zero_type_ids = not any(tokenizer.encode("probe text", add_special_tokens=True).type_ids)
        # Pairs (BERT's template) give the second text type id 1; others (RoBERTa, ModernBERT) give 0 throughout.
        self._zero_pair_type_ids = not any(tokenizer.encode("probe", "text", add_special_tokens=True).type_ids)
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self._add_special_tokens = manifest.add_special_tokens  # False for StaticEmbedding
        self._left_truncation = manifest.truncation_side == "left"
        # Cutting long texts is safe only where the pre-tokenizer ends every word at a space (see _cut).
        config = json.loads(tokenizer.to_str())
        self._may_cut = _splits_at_spaces(config.get("pre_tokenizer"))
        self._cut_after_cjk = self._may_cut and _isolates_cjk(config.get("normalizer"))
        # The same tokenizer without truncation, to count the tokens of a piece of a text (see _cut).
        counter = Tokenizer.from_str(tokenizer.to_str())
        counter.no_truncation()
        self._count_batch = getattr(counter, "encode_batch_fast", counter.encode_batch)
        self._head_tokenizer: Tokenizer | None = None  # built on first use by heads()

    def encode(self, texts: Sequence[Item]) -> list[Encoding | Truncated]:
        """Tokenize without padding; each encoding keeps its own length. A text far over max_seq_length is
        first cut to a piece that gives the same tokens (see :meth:`_cut`): tokenizing all of it would cost
        time and ~190 bytes a token for tokens that truncation drops. One that cannot be cut is tokenized
        whole, a few at a time, and only its kept tokens are held (:class:`Truncated`). A (query, document)
        pair is one input, truncated longest first as sentence-transformers' CrossEncoder does."""
        items = self._cut_items(texts)
        long = self._long(items)
        if not any(long):
            return self._encode_batch(items, add_special_tokens=self._add_special_tokens)
        encodings: list[Any] = [None] * len(items)
        short = [index for index, is_long in enumerate(long) if not is_long]
        for group in [short, *self._groups(items, long)]:
            group_items = [items[index] for index in group]
            if group is short:
                batch: list[Any] = self._encode_batch(group_items, add_special_tokens=self._add_special_tokens)
            elif all(isinstance(item, str) for item in group_items):
                batch = [
                    Truncated.of(encoding)
                    for encoding in self._encode_batch(group_items, add_special_tokens=self._add_special_tokens)
                ]
            else:
                batch = [self._truncated(item) for item in group_items]
            for index, encoding in zip(group, batch, strict=True):
                encodings[index] = encoding
        return encodings

    def _truncated(self, item: Item) -> Truncated:
        """A long input's kept tokens. A pair is tokenized whole without truncation and cut longest first
        here: the tokenizer's own truncation would pair every overflowing piece of one text with every one
        of the other (memory with the product of their lengths: 2.4 GB for two 1,000-word texts at
        max_seq_length 16). The rule is tokenizers' LongestFirst: a shorter text within half the budget is
        kept whole and the other takes the rest; else each takes half, the odd token to the longer (to the
        second on a tie). Special tokens stay where the template put them."""
        if isinstance(item, str):
            return Truncated.of(self._encode_batch([item], add_special_tokens=self._add_special_tokens)[0])
        encoding = self._count_batch([item], add_special_tokens=self._add_special_tokens)[0]
        sequence_ids = encoding.sequence_ids
        lengths = (sequence_ids.count(0), sequence_ids.count(1))
        budget = self._max_length - (self._tokenizer.num_special_tokens_to_add(True) if self._add_special_tokens else 0)
        keep = _longest_first(*lengths, budget)
        seen = [0, 0]
        kept = []
        for position, sequence in enumerate(sequence_ids):
            if sequence is not None:
                seen[sequence] += 1
                rank = seen[sequence] if not self._left_truncation else lengths[sequence] - seen[sequence] + 1
                if rank > keep[sequence]:
                    continue
            kept.append(position)
        ids, type_ids = encoding.ids, encoding.type_ids
        return Truncated([ids[i] for i in kept], [type_ids[i] for i in kept], encoding.n_sequences)

    def over_limit(self, texts: Sequence[Item]) -> list[bool]:
        """Whether each text or pair (prompt included) has more tokens than max_seq_length, special tokens
        included, before truncation. Counts no more of a text than that answer needs, and holds the full
        count of a long text only while it counts it."""
        items = self._cut_items(texts)
        over = [False] * len(items)
        long = self._long(items)
        short = [index for index, is_long in enumerate(long) if not is_long]
        for group in [short, *self._groups(items, long)]:
            counts = self._count_batch([items[index] for index in group], add_special_tokens=self._add_special_tokens)
            for index, encoding in zip(group, counts, strict=True):
                over[index] = len(encoding.ids) > self._max_length
        return over

    def _long(self, items: Sequence[Item]) -> list[bool]:
        """Whether each item is still longer than a cut piece could be (it had nowhere to cut)."""
        budget = (self._max_length + CUT_MARGIN_TOKENS) * CHARS_PER_TOKEN
        return [_characters(item) > budget for item in items]

    @staticmethod
    def _groups(items: Sequence[Item], long: list[bool]) -> list[list[int]]:
        """The indices of the long items, in order, in groups of about LONG_GROUP_CHARS characters."""
        groups: list[list[int]] = []
        size = LONG_GROUP_CHARS
        for index, is_long in enumerate(long):
            if not is_long:
                continue
            if size >= LONG_GROUP_CHARS:
                groups.append([])
                size = 0
            groups[-1].append(index)
            size += _characters(items[index])
        return groups

    def heads(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        """Each text cut after its first ``max_tokens`` tokens (no special tokens), at the end of that token's
        characters; shorter texts are kept whole. Cohere's ``max_tokens_per_doc`` for rerankers. With
        ``max_tokens`` >= max_seq_length nothing is cut: a pair's truncation already keeps fewer of a text."""
        if max_tokens >= self._max_length:
            return list(texts)
        if self._head_tokenizer is None:
            # the tokenizer with offsets and right truncation, whatever side the model truncates pairs on
            head = Tokenizer.from_str(self._tokenizer.to_str())
            head.enable_truncation(max_length=self._max_length, direction="right")
            self._head_tokenizer = head
        # a long text is first cut to a piece with the same first max_seq_length tokens (see _cut)
        pieces = list(texts) if self._left_truncation else self._cut(list(texts))
        encodings = self._head_tokenizer.encode_batch(pieces, add_special_tokens=False)
        return [
            text if len(encoding.offsets) <= max_tokens else text[: encoding.offsets[max_tokens - 1][1]]
            for text, encoding in zip(texts, encodings, strict=True)
        ]

    def _cut_items(self, items: Sequence[Item]) -> list[Item]:
        """:meth:`_cut` for texts and pairs. In a pair with one long text, that text is cut, and kept whole
        unless its piece still has more tokens than the other text: longest-first truncation then takes from
        the piece exactly what it took from the whole text. Pairs whose texts are both long: :meth:`_cut_both`."""
        if all(isinstance(item, str) for item in items):
            return list(self._cut(list(items)))  # type: ignore[arg-type]
        budget = (self._max_length + CUT_MARGIN_TOKENS) * CHARS_PER_TOKEN
        result: list[Item] = list(items)
        lone: dict[int, int] = {}  # pair index -> which of its two texts is the only long one
        both: list[int] = []
        for index, item in enumerate(items):
            if not isinstance(item, str):
                long = [len(text) > budget for text in item]
                if long[0] != long[1]:
                    lone[index] = 0 if long[0] else 1
                elif long[0]:
                    both.append(index)
        if both:
            self._cut_both(items, both, result)
        if not lone:
            return result
        pieces = self._cut([items[index][side] for index, side in lone.items()])
        cut = {
            index: piece
            for (index, side), piece in zip(lone.items(), pieces, strict=True)
            if piece != items[index][side]
        }
        if not cut:
            return result
        others = [items[index][1 - lone[index]] for index in cut]
        counts = self._count_batch([*cut.values(), *others], add_special_tokens=False)
        for position, (index, piece) in enumerate(cut.items()):
            if len(counts[position].ids) > len(counts[len(cut) + position].ids):
                pair = list(items[index])
                pair[lone[index]] = piece
                result[index] = (pair[0], pair[1])
        return result

    def _cut_both(self, items: Sequence[Item], indices: list[int], result: list[Item]) -> None:
        """Pairs whose two texts are both long, cut in ``result``. The tokenizer pairs every overflowing piece
        of one text with every one of the other, so a whole pair costs memory with the product of the two
        lengths (two 1,000-word texts at max_seq_length 16: 2.4 GB). Longest-first truncation keeps the same
        tokens from two pieces as from the whole texts when each piece has more tokens than are kept and the
        pieces compare as the whole texts do (the odd token goes to the longer): the whole texts are counted
        (each alone, linear), and where the pieces compare otherwise the longer text's piece is lengthened."""
        texts = list(dict.fromkeys(text for index in indices for text in items[index]))  # a query may repeat
        pieces = dict(zip(texts, self._cut(texts), strict=True))
        if all(pieces[text] == text for text in texts):
            return
        counted = self._count_batch([*texts, *pieces.values()], add_special_tokens=False)
        whole = {text: len(encoding.ids) for text, encoding in zip(texts, counted[: len(texts)], strict=True)}
        piece = {text: len(encoding.ids) for text, encoding in zip(texts, counted[len(texts) :], strict=True)}
        for index in indices:
            first, second = cast(tuple[str, str], items[index])
            order = _compare(whole[first], whole[second])
            cut_first, cut_second = pieces[first], pieces[second]
            if _compare(piece[first], piece[second]) != order:
                if order > 0:
                    cut_first = self._piece_over(first, piece[second])
                elif order < 0:
                    cut_second = self._piece_over(second, piece[first])
                else:  # as many tokens in both (pieces of one length would do; rare): whole
                    continue
            result[index] = (cut_first, cut_second)

    def _piece_over(self, text: str, tokens: int) -> str:
        """A piece of ``text`` (as :meth:`_cut` makes them) with more than ``tokens`` tokens; ``text`` itself
        when it has no such piece shorter than itself."""
        size = (max(tokens, self._max_length) + CUT_MARGIN_TOKENS) * CHARS_PER_TOKEN
        while (piece := _piece(text, size, self._left_truncation, self._cut_after_cjk)) is not None:
            if len(self._count_batch([piece], add_special_tokens=False)[0].ids) > tokens:
                return piece
            size = 2 * len(piece)
        return text

    def _cut(self, texts: list[str]) -> list[str]:
        """``texts``, each long one cut before a space (U+0020) where the piece before it (after it, for left
        truncation) already yields more than max_seq_length tokens without special tokens.

        Why the tokens cannot change: the pre-tokenizers this cuts for (whitespace, BERT, byte-level BPE with
        its regex, Metaspace that splits) end a word at a space, so the piece's tokens are exactly the whole
        text's tokens up to that space; truncation keeps at most max_seq_length of them. A left piece starts
        with its space, as the word after it has one in the whole text (byte-level BPE folds it into the word's
        token). A text with no space past the budget is kept whole; so is every text of a model without a length
        limit (StaticEmbedding: 2**31 - 1) and of a tokenizer that may merge across spaces (no pre-tokenizer, as
        Gemma's, or a custom split). The piece keeps CUT_MARGIN_TOKENS more tokens than truncation keeps.
        With BERT's normalizer, which puts spaces around every CJK ideograph, a text may also be cut right after
        one (before one, for left truncation): Chinese has no spaces to cut at."""
        limit = self._max_length + CUT_MARGIN_TOKENS
        budget = limit * CHARS_PER_TOKEN
        if not self._may_cut or not any(len(text) > budget for text in texts):
            return texts
        texts = list(texts)
        budgets = {index: budget for index, text in enumerate(texts) if len(text) > budget}
        while budgets:
            pieces: dict[int, str] = {}
            for index, size in budgets.items():
                piece = _piece(texts[index], size, self._left_truncation, self._cut_after_cjk)
                if piece is not None:
                    pieces[index] = piece
            encodings = self._count_batch(list(pieces.values()), add_special_tokens=False)
            budgets = {}
            for (index, piece), encoding in zip(pieces.items(), encodings, strict=True):
                if len(encoding.ids) > limit:
                    texts[index] = piece
                else:  # too few tokens (spaces, say): try a piece twice as long
                    budgets[index] = 2 * len(piece)
        return texts

    def pad(self, encodings: Sequence[Encoding | Truncated], multiple_of: int = 1) -> dict[str, np.ndarray]:
        """Pad encodings to the longest one, rounded up to ``multiple_of`` (repeating shapes suit a GPU):
        input_ids, attention_mask, token_type_ids, each (batch, seq) int64.

        Whole-batch numpy: the token ids of all rows are laid end to end and scattered into the padded
        array through the mask, instead of one slice assignment per row.
        """
        ids = [encoding.ids for encoding in encodings]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        longest = int(lengths.max())
        # never past max_seq_length (a model's position table may end there) unless a text already is
        longest = min(-(-longest // multiple_of) * multiple_of, max(self._max_length, longest))
        positions = np.arange(longest)
        if self._left_padding:
            real = positions[None, :] >= (longest - lengths)[:, None]
        else:
            real = positions[None, :] < lengths[:, None]
        total = int(lengths.sum())
        input_ids = np.full(real.shape, self._pad_token_id, dtype=np.int64)
        input_ids[real] = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=total)
        token_type_ids = np.zeros(real.shape, dtype=np.int64)
        pairs = bool(encodings) and encodings[0].n_sequences > 1
        if not (self._zero_pair_type_ids if pairs else self._zero_type_ids):
            token_type_ids[real] = np.fromiter(chain.from_iterable(e.type_ids for e in encodings), np.int64, total)
        return {"input_ids": input_ids, "attention_mask": real.astype(np.int64), "token_type_ids": token_type_ids}

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt takes at the start of a text, excluding a trailing special token
        (sentence-transformers' rule for ``include_prompt=False``). Remembered per prompt: the server asks
        for every batch."""
        length = self._prompt_lengths.get(prompt)
        if length is None:
            ids = self._tokenizer.encode(prompt, add_special_tokens=self._add_special_tokens).ids
            length = len(ids) - 1 if ids and ids[-1] in self._special_ids else len(ids)
            if len(self._prompt_lengths) < 64:  # a model has a few prompts; callers may send any
                self._prompt_lengths[prompt] = length
        return length


def _longest_first(first: int, second: int, budget: int) -> tuple[int, int]:
    """The tokens a pair keeps of each text under tokenizers' LongestFirst truncation to ``budget`` tokens."""
    if first + second <= budget:
        return first, second
    swap = first > second
    shorter, longer = (second, first) if swap else (first, second)
    shorter_keep = shorter
    longer_keep = shorter if shorter > budget else max(shorter, budget - shorter)
    if shorter_keep + longer_keep > budget:
        shorter_keep, longer_keep = budget // 2, budget // 2 + budget % 2
    return (longer_keep, shorter_keep) if swap else (shorter_keep, longer_keep)


def _compare(first: int, second: int) -> int:
    """1, 0 or -1 as ``first`` is more than, as many as or fewer than ``second``."""
    return (first > second) - (first < second)


def _characters(item: Item) -> int:
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


def _splits_at_spaces(pre_tokenizer: dict[str, Any] | None) -> bool:
    """Whether a tokenizer.json pre_tokenizer ends every word at a space (a Sequence: whether one member does)."""
    if not pre_tokenizer:
        return False
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return any(_splits_at_spaces(member) for member in pre_tokenizer.get("pretokenizers", []))
    if kind == "ByteLevel":
        return bool(pre_tokenizer.get("use_regex", True))
    if kind == "Metaspace":
        return bool(pre_tokenizer.get("split", True))
    return kind in _SPACE_SPLITTERS


def _isolates_cjk(normalizer: dict[str, Any] | None) -> bool:
    """Whether a tokenizer.json normalizer is BERT's with handle_chinese_chars, alone or in a Sequence of
    per-character normalizers."""
    if not normalizer:
        return False
    members = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    if not members or any(member.get("type") not in _PER_CHARACTER_NORMALIZERS for member in members):
        return False
    return any(member["type"] == "BertNormalizer" and member.get("handle_chinese_chars") for member in members)


def _piece(text: str, size: int, from_end: bool, after_cjk: bool = False) -> str | None:
    """The shortest piece of at least ``size`` characters that ends before a space (``from_end``: the
    shortest tail that starts with one), or with ``after_cjk`` also right after a CJK ideograph (a tail:
    right before one); None when there is none shorter than ``text``."""
    if size >= len(text):
        return None
    if from_end:
        start = text.rfind(" ", 1, len(text) - size + 1)
        if after_cjk:
            # the last ideograph at or before len(text) - size, searched in the reversed text
            found = _CJK_IDEOGRAPH.search(text[::-1], size - 1, len(text) - 1)
            if found is not None:
                start = max(start, len(text) - 1 - found.start())
        return None if start <= 0 else text[start:]
    end = text.find(" ", size)
    if after_cjk:
        found = _CJK_IDEOGRAPH.search(text, size - 1, end if end >= 0 else len(text))
        if found is not None:
            end = found.end()
    return None if end < 0 or end >= len(text) else text[:end]
