"""Tiny random-weight replicas of the newer encoder families: ModernBERT, T5 (sentence-t5/GTR) and
EmbeddingGemma's Gemma3TextModel, each with a tokenizer trained here the way its model ships one.

Windows are tiny (8 tokens) so that ordinary texts already run through local / sliding attention.
Nothing touches the network or the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.replicas import CORPUS, Replica

FAMILY_FIXTURES = ["modernbert", "t5_encoder", "mt5_encoder", "embedding_gemma"]

NOMIC_PROMPTS = {"query": "search_query: ", "document": "search_document: "}
GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def _byte_level_bpe(texts: list[str], specials: list[str], template: str, vocab_size: int = 500) -> Any:
    """A byte-level BPE (GPT-2 style, as ModernBERT's OLMo tokenizer and Gemma's byte fallback cover any text)
    with ``template`` (e.g. "[CLS] $A [SEP]") around each text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    pieces = [piece for piece in template.split() if piece != "$A"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(piece, tokenizer.token_to_id(piece)) for piece in pieces]
    )
    return tokenizer


def _louder(model: Any) -> Any:
    """Linear weights at 1/sqrt(fan_in), T5's position bias at 1: the families' own inits (std 0.02, scaled
    down per layer) leave each layer's output tiny beside the residual, so a wrong attention window or
    position would hide under the tolerances."""
    import torch

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
            elif name.endswith("relative_attention_bias"):
                module.weight.normal_(0.0, 1.0)
    return model


def _save(
    out: Path,
    hf_model: Any,
    tokenizer: Any,
    *,
    max_seq_length: int,
    prompts: dict[str, str] | None = None,
    dense: list[tuple[int, int]] | None = None,
) -> Path:
    """Transformer -> mean Pooling [-> Dense ...] -> Normalize, saved as a SentenceTransformer directory."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    hf_dir = out.parent / f"{out.name}-hf"
    hf_model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=max_seq_length)
    modules: list[Any] = [transformer, models.Pooling(hf_model.config.hidden_size, pooling_mode="mean")]
    for in_features, out_features in dense or []:
        # EmbeddingGemma's projections: no bias, no activation
        modules.append(models.Dense(in_features, out_features, bias=False, activation_function=torch.nn.Identity()))
    modules.append(models.Normalize())
    model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts)
    model.save(str(out))
    return out


def build_modernbert(out: Path) -> Replica:
    """ModernBertModel as nomic/modernbert-embed: RoPE, a global layer then a local one (window 8),
    byte-level BPE with [CLS] ... [SEP], no token_type_ids, mean + Normalize, search_query/document prompts."""
    import torch
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    torch.manual_seed(10)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    raw = _byte_level_bpe(CORPUS, specials, "[CLS] $A [SEP]")
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
    )
    path = _save(out, _louder(ModernBertModel(config)), tokenizer, max_seq_length=128, prompts=NOMIC_PROMPTS)
    return Replica("modernbert", path, prompts=NOMIC_PROMPTS)


def _t5_tokenizer() -> Any:
    """SentencePiece-style Unigram with Metaspace, "</s>" appended, <pad> = 0, as T5's spiece model."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    raw = Tokenizer(models.Unigram())
    raw.normalizer = normalizers.NFKC()
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    raw.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    )
    raw.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", raw.token_to_id("</s>"))]
    )
    return T5TokenizerFast(tokenizer_object=raw, extra_ids=0, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_t5(out: Path, mt5: bool = False, dense: bool = False) -> Replica:
    """T5EncoderModel as sentence-t5 (relu FFN) or MT5EncoderModel as mT5-based models (gated GELU): relative
    position bias, Unigram tokenizer with </s>, pad 0; mean + Normalize (the real ones' Dense is left out)."""
    import torch
    from transformers import MT5Config, MT5EncoderModel, T5Config, T5EncoderModel

    torch.manual_seed(11 + mt5)
    tokenizer = _t5_tokenizer()
    config_cls, model_cls = (MT5Config, MT5EncoderModel) if mt5 else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu" if mt5 else "relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    name = "mt5-encoder" if mt5 else "t5-encoder"
    # sentence-t5 / GTR: one bias-free projection after mean pooling
    layers = [(config.d_model, config.d_model)] if dense else None
    path = _save(out, _louder(model_cls(config)), tokenizer, max_seq_length=128, dense=layers)
    return Replica(name, path)


def build_embedding_gemma(out: Path, dense: bool = False) -> Replica:
    """Gemma3TextModel as EmbeddingGemma: bidirectional attention, sliding (window 8) and full layers, GQA,
    RMSNorm, byte-level BPE with <bos> ... <eos>, mean + Normalize, task prompts. ``dense`` adds the real
    model's two bias-free projections (hidden -> 4 x hidden -> hidden) between Pooling and Normalize."""
    import torch
    from transformers import Gemma3TextConfig, Gemma3TextModel, GemmaTokenizerFast

    torch.manual_seed(13)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # Gemma's ids: pad 0, eos 1, bos 2, unk 3
    raw = _byte_level_bpe(CORPUS, specials, "<bos> $A <eos>")
    # add_eos_token as EmbeddingGemma's tokenizer (GemmaTokenizerFast rebuilds the template from these flags);
    # right padding: Gemma3 counts positions from the first token, so left padding would shift them per batch
    tokenizer = GemmaTokenizerFast(
        tokenizer_object=raw,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=True,
        padding_side="right",
    )
    config = Gemma3TextConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=512,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        use_bidirectional_attention=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    hidden = config.hidden_size
    layers = [(hidden, 4 * hidden), (4 * hidden, hidden)] if dense else None
    path = _save(
        out, _louder(Gemma3TextModel(config)), tokenizer, max_seq_length=128, prompts=GEMMA_PROMPTS, dense=layers
    )
    return Replica("embedding-gemma", path, prompts=GEMMA_PROMPTS)


@pytest.fixture(scope="session")
def modernbert(replicas_dir: Path) -> Replica:
    return build_modernbert(replicas_dir / "modernbert")


@pytest.fixture(scope="session")
def t5_encoder(replicas_dir: Path) -> Replica:
    return build_t5(replicas_dir / "t5-encoder")


@pytest.fixture(scope="session")
def mt5_encoder(replicas_dir: Path) -> Replica:
    return build_t5(replicas_dir / "mt5-encoder", mt5=True)


@pytest.fixture(scope="session")
def embedding_gemma(replicas_dir: Path) -> Replica:
    return build_embedding_gemma(replicas_dir / "embedding-gemma")
