"""Test helpers shared by the suite: the texts every model is checked on, tokenizers trained on the test corpus,
and builders of tiny random-weight SentenceTransformer directories (their fixtures live in conftest.py).

Nothing touches the network or the working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
CORPUS = [line for line in (DATA / "multilingual.txt").read_text(encoding="utf-8").splitlines() if line]
LONG_TEXT = " ".join(CORPUS) * 3  # far over every max_seq_length here

# Texts every model is checked on: empty, one character, each script, emoji, far too long.
MIXED_TEXTS = [
    "",
    "a",
    "Hello World! THE CASE matters for cased models.",
    "我想买一个羽毛球拍，有什么推荐吗？",
    "상법 제651조의 내용은 무엇인가?",
    "සීගිරිය යනු ලොව පුරා ප්‍රසිද්ධ ඓතිහාසික ස්ථානයකි",
    "Emoji are text too 😀🎉👍🏽",
    LONG_TEXT,
    *CORPUS[:12],
    " ",
    "x" * 50,
]

# The tiny replicas built below, by fixture name (the real all-MiniLM-L6-v2 is the `minilm` fixture).
REPLICA_FIXTURES = [
    "chinese_bert",
    "korean_sentencepiece_bert",
    "xlm_roberta",
    "roberta_lora",
    "distilbert_lowercase",
    "mpnet_prompts",
    "cls_pooling_bert",
    "multi_pooling_bert",
]

QUERY_PROMPTS = {
    "query": "Represent this sentence for searching relevant passages: ",
    "passage": "Represent this sentence for retrieving relevant passages: ",
}


@dataclass(frozen=True)
class Replica:
    """A SentenceTransformer directory built for the tests, and how it was built."""

    name: str
    path: Path
    prompts: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def wordpiece(texts: list[str], lowercase: bool, specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tokenizer


def unigram(texts: list[str], specials: list[str], unk: str, bos: str, eos: str) -> Any:
    """A SentencePiece-style Unigram tokenizer (Metaspace pre-tokenizer), as XLM-R uses."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token=unk)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))],
    )
    return tokenizer


BERT_SPECIALS = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]  # [PAD] = 1, as RoBERTa's padding_idx
BERT_SPECIAL_NAMES = {
    "unk_token": "[UNK]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def bert_fast(tokenizer: Any, token_type_ids: bool = True) -> Any:
    from transformers import BertTokenizerFast

    names = ["input_ids", "token_type_ids", "attention_mask"] if token_type_ids else ["input_ids", "attention_mask"]
    return BertTokenizerFast(tokenizer_object=tokenizer, model_input_names=names, **BERT_SPECIAL_NAMES)


def save_sentence_transformer(
    out: Path,
    hf_model: Any,
    tokenizer: Any,
    *,
    max_seq_length: int,
    pooling_mode: str | tuple[str, ...] = "mean",
    normalize: bool = False,
    include_prompt: bool = True,
    do_lower_case: bool = False,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    similarity_fn_name: str | None = None,
) -> Path:
    from sentence_transformers import SentenceTransformer, models

    hf_dir = out.parent / f"{out.name}-hf"
    hf_model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=max_seq_length, do_lower_case=do_lower_case)
    modules: list[Any] = [
        transformer,
        models.Pooling(hf_model.config.hidden_size, pooling_mode=pooling_mode, include_prompt=include_prompt),
    ]
    if normalize:
        modules.append(models.Normalize())
    model = SentenceTransformer(
        modules=modules,
        device="cpu",
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        similarity_fn_name=similarity_fn_name,
    )
    model.save(str(out))
    return out


def tiny_bert_config(vocab_size: int, **overrides: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=1,
        **overrides,
    )


_EXPORTS: dict[str, Path] = {}


def exported(replica: Replica, exports_dir: Path) -> Path:
    """Export a replica once per run; later calls reuse the directory."""
    from onnxembed import export

    if replica.name not in _EXPORTS:
        out = exports_dir / replica.name
        export(replica.path, out)
        _EXPORTS[replica.name] = out
    return _EXPORTS[replica.name]
