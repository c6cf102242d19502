"""Tiny random-weight CrossEncoder (reranker) replicas, each saved the way a sentence-transformers release saves
one, with tokenizers trained here; and the pairs every reranker is checked on.

- bert_reranker: BertForSequenceClassification, num_labels 1 (Sigmoid by default), max_length 63 (odd: longest-
  first truncation of two long texts gives the odd token to the longer), saved by CrossEncoder.save (5.x format).
- xlmr_reranker: XLMRobertaForSequenceClassification, the pre-4.0 format (no modules.json, the activation as
  ``sbert_ce_default_activation_function`` in config.json).
- modernbert_reranker: ModernBertForSequenceClassification (a local window of 8 tokens), 5.x format, a prompt.
- distilbert_reranker: DistilBertForSequenceClassification (pre_classifier + ReLU head, no token type ids),
  num_labels 1, cased, 5.x format.
- mpnet_reranker: MPNetForSequenceClassification (dense + tanh head), num_labels 1, MPNet's pair template
  (``<s> A </s></s> B </s>``, here with [CLS]/[SEP]) and max_length 57, 5.x format.
- nli_bert: BertForSequenceClassification with 3 labels (Identity by default, softmax asked for in predict), the
  4.x format (``sentence_transformers.activation_fn`` in config.json).

Nothing touches the network or the working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.replicas import (
    BERT_SPECIALS,
    CORPUS,
    LONG_TEXT,
    MIXED_TEXTS,
    Replica,
    bert_fast,
    tiny_bert_config,
    unigram,
    wordpiece,
)

MODERNBERT_PROMPTS = {"query": "search_query: "}
RERANKER_FIXTURES = [
    "bert_reranker",
    "xlmr_reranker",
    "modernbert_reranker",
    "distilbert_reranker",
    "mpnet_reranker",
    "nli_bert",
]

# Queries against every mixed text: empty, scripts, emoji, far too long; plus long-against-long both ways.
PAIRS = [(query, text) for query in ("", "a", CORPUS[0], CORPUS[5], LONG_TEXT) for text in MIXED_TEXTS] + [
    (LONG_TEXT[:3000], LONG_TEXT),
    (LONG_TEXT, LONG_TEXT[:3001]),
    (LONG_TEXT[:600], CORPUS[3] * 20),
]


def louder(model: Any) -> Any:
    """Weights at 1/sqrt(fan_in): the default init (std 0.02) makes every pair score ~0.5004, so that neither
    a wrong truncation nor a wrong order would show."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0)
    return model


def _save_cross_encoder(out: Path, model: Any, tokenizer: Any, max_length: int, **options: Any) -> Path:
    """Save as sentence-transformers 5.x saves a CrossEncoder (modules.json, config_sentence_transformers.json)."""
    from sentence_transformers import CrossEncoder

    hf_dir = out.parent / f"{out.name}-hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    CrossEncoder(str(hf_dir), max_length=max_length, device="cpu", **options).save(str(out))
    return out


def build_bert_reranker(out: Path) -> Replica:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(20)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS))
    model = louder(BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, num_labels=1)))
    return Replica("bert-reranker", _save_cross_encoder(out, model, tokenizer, 63))


def build_xlmr_reranker(out: Path) -> Replica:
    """The pre-4.0 format: a plain transformers directory whose config.json names the activation."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast

    torch.manual_seed(21)
    raw = unigram(CORPUS, specials=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk="<unk>", bos="<s>", eos="</s>")
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=raw, model_max_length=96)
    config = XLMRobertaConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        num_labels=1,
        sbert_ce_default_activation_function="torch.nn.modules.activation.Sigmoid",
    )
    model = louder(XLMRobertaForSequenceClassification(config))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Replica("xlmr-reranker", out)


def build_modernbert_reranker(out: Path) -> Replica:
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, PreTrainedTokenizerFast

    from tests.families import _byte_level_bpe

    torch.manual_seed(22)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    raw = _byte_level_bpe(CORPUS, specials, "[CLS] $A [SEP]")
    # the pair template of ModernBERT's tokenizer: [CLS] A [SEP] B [SEP], one type id
    from tokenizers import processors

    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )
    config = ModernBertConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        global_attn_every_n_layers=2,
        local_attention=8,
        pad_token_id=raw.token_to_id("[PAD]"),
        cls_token_id=raw.token_to_id("[CLS]"),
        sep_token_id=raw.token_to_id("[SEP]"),
        bos_token_id=raw.token_to_id("[CLS]"),
        eos_token_id=raw.token_to_id("[SEP]"),
        num_labels=1,
    )
    model = louder(ModernBertForSequenceClassification(config))
    path = _save_cross_encoder(out, model, tokenizer, 80, prompts=MODERNBERT_PROMPTS)
    return Replica("modernbert-reranker", path, prompts=MODERNBERT_PROMPTS)


def build_distilbert_reranker(out: Path) -> Replica:
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(24)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=False, specials=BERT_SPECIALS), token_type_ids=False)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, pad_token_id=1, num_labels=1
    )
    model = louder(DistilBertForSequenceClassification(config))
    return Replica("distilbert-reranker", _save_cross_encoder(out, model, tokenizer, 40))


def build_mpnet_reranker(out: Path) -> Replica:
    import torch
    from tokenizers import processors
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(25)
    raw = wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS)
    # MPNet's pair template: two separators between the texts, one type id throughout
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] [SEP] $B [SEP]",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))],
    )
    tokenizer = bert_fast(raw, token_type_ids=False)
    config = MPNetConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=1,
        num_labels=1,
    )
    model = louder(MPNetForSequenceClassification(config))
    return Replica("mpnet-reranker", _save_cross_encoder(out, model, tokenizer, 57))


def build_nli_bert(out: Path) -> Replica:
    """3 labels, the 4.x format (the activation under ``sentence_transformers`` in config.json)."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(23)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=False, specials=BERT_SPECIALS))
    config = tiny_bert_config(tokenizer.vocab_size, num_labels=3)
    model = louder(BertForSequenceClassification(config))
    path = _save_cross_encoder(out, model, tokenizer, 48)
    # rewrite as 4.x saved it: no modules.json, the activation in config.json
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"):
        (path / name).unlink()
    config_json = json.loads((path / "config.json").read_text())
    config_json["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity", "version": "4.1.0"}
    (path / "config.json").write_text(json.dumps(config_json))
    return Replica("nli-bert", path)


# Built once per run: each test module that names a fixture gets its own copy of it from pytest, and a second
# build into the same directory would train another tokenizer (its ids are not deterministic) under exports
# made from the first.
_BUILT: dict[str, Replica] = {}


def _once(name: str, build: Any, out: Path) -> Replica:
    if name not in _BUILT:
        _BUILT[name] = build(out)
    return _BUILT[name]


@pytest.fixture(scope="session")
def bert_reranker(replicas_dir: Path) -> Replica:
    return _once("bert", build_bert_reranker, replicas_dir / "bert-reranker")


@pytest.fixture(scope="session")
def xlmr_reranker(replicas_dir: Path) -> Replica:
    return _once("xlmr", build_xlmr_reranker, replicas_dir / "xlmr-reranker")


@pytest.fixture(scope="session")
def modernbert_reranker(replicas_dir: Path) -> Replica:
    return _once("modernbert", build_modernbert_reranker, replicas_dir / "modernbert-reranker")


@pytest.fixture(scope="session")
def distilbert_reranker(replicas_dir: Path) -> Replica:
    return _once("distilbert", build_distilbert_reranker, replicas_dir / "distilbert-reranker")


@pytest.fixture(scope="session")
def mpnet_reranker(replicas_dir: Path) -> Replica:
    return _once("mpnet", build_mpnet_reranker, replicas_dir / "mpnet-reranker")


@pytest.fixture(scope="session")
def nli_bert(replicas_dir: Path) -> Replica:
    return _once("nli", build_nli_bert, replicas_dir / "nli-bert")


_EXPORTS: dict[str, Path] = {}


def exported_reranker(replica: Replica, exports_dir: Path, **options: Any) -> Path:
    """Export a reranker replica once per run (per options); later calls reuse the directory."""
    from onnxembed import export

    key = replica.name + "".join(f"-{name}={value}" for name, value in sorted(options.items()))
    if key not in _EXPORTS:
        out = exports_dir / key
        export(replica.path, out, **options)
        _EXPORTS[key] = out
    return _EXPORTS[key]
