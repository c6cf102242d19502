"""Tiny random-weight replicas of decoder embedding models, each with a tokenizer trained here the way its model
ships one: Qwen3-Embedding (Qwen3Model, left padding, <|endoftext|> appended by the post-processor, an
instruction prompt for queries) and e5-mistral (MistralModel, right padding, </s> appended through
add_eos_token, a sliding window), plus Qwen2 / Llama bases and a mean-pooled decoder.

Nothing touches the network or the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.families import _louder
from tests.replicas import CORPUS, Replica

# Qwen3-Embedding's prompts as its config_sentence_transformers.json has them: an instruction for queries only.
QWEN3_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}
E5_MISTRAL_PROMPTS = {"query": "Instruct: Given a web search query, retrieve relevant passages\nQuery: "}
# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2/Qwen3): the regex runs first, ByteLevel only maps bytes.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# short, so LONG_TEXT is truncated and the end token must still be appended; past the 65 tokens of
# Qwen3-Embedding's query instruction, so prompted texts keep some of their own tokens
MAX_SEQ_LENGTH = 128


def _qwen_tokenizer(padding_side: str) -> Any:
    """Qwen2TokenizerFast as Qwen3-Embedding ships it: NFC, regex split + byte-level BPE, <|endoftext|> as the
    pad token and appended to every text by a TemplateProcessing post-processor, <|im_end|> as eos."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import Qwen2TokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(CORPUS, trainer)
    end = raw.token_to_id("<|endoftext|>")
    raw.post_processor = processors.TemplateProcessing(
        single="$A:0 <|endoftext|>:0",
        pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", end)],
    )
    return Qwen2TokenizerFast(
        tokenizer_object=raw,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side=padding_side,
    )


def _llama_tokenizer(padding_side: str) -> Any:
    """LlamaTokenizerFast as e5-mistral ships it: <s> ... </s> (add_eos_token, which rebuilds the template),
    </s> as the pad token; byte-level BPE stands in for SentencePiece's byte fallback (any text has tokens)."""
    from transformers import LlamaTokenizerFast

    from tests.families import _byte_level_bpe

    raw = _byte_level_bpe(CORPUS, ["<unk>", "<s>", "</s>"], "<s> $A </s>")
    return LlamaTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        add_bos_token=True,
        add_eos_token=True,
        padding_side=padding_side,
    )


def _save(out: Path, hf_model: Any, tokenizer: Any, *, pooling: str, prompts: dict[str, str] | None = None) -> Path:
    """Transformer -> Pooling -> Normalize, saved as a SentenceTransformer directory."""
    from sentence_transformers import SentenceTransformer, models

    hf_dir = out.parent / f"{out.name}-hf"
    hf_model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    modules: list[Any] = [
        models.Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH),
        models.Pooling(hf_model.config.hidden_size, pooling_mode=pooling),
        models.Normalize(),
    ]
    SentenceTransformer(modules=modules, device="cpu", prompts=prompts).save(str(out))
    return out


def _decoder_config(config_cls: Any, tokenizer: Any, hidden: int = 32, **extra: Any) -> Any:
    """GQA (4 query heads, 2 key/value heads), RoPE, RMSNorm, SiLU-gated MLP: the shape all these bases share."""
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return config_cls(**{**shape, **extra})


def _with_end_token_embedding(model: Any, tokenizer: Any) -> Any:
    """A real vector for the pad token: nn.Embedding's padding_idx zeroes it at init, but these models' pad token
    is the end token they pool (<|endoftext|>, </s>), and a trained model's row is not zero."""
    import torch

    with torch.no_grad():
        model.embed_tokens.weight[tokenizer.pad_token_id].normal_(0.0, 0.02)
    return model


def with_outlier_channels(model: Any, channels: tuple[int, ...] = (3, 17), scale: float = 30.0) -> Any:
    """SYNTHETIC outlier channels, as trained decoders have and random weights lack: a few channels of every
    RMSNorm weight (the inputs of q/k/v and of the gate/up projections) and a few rows of every up projection
    (the down projection's input) ``scale`` times the rest. Results on such replicas are labelled synthetic."""
    import torch

    with torch.no_grad():
        for layer in model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[list(channels)] *= scale
            layer.mlp.up_proj.weight[list(channels)] *= scale
    return model


# family -> (config class, model class, tokenizer builder, seed, extra config) as each real model has it:
# Qwen3 with q/k RMSNorm and a head_dim set apart from hidden / heads, Qwen2 with q/k/v biases (its default),
# Mistral with a sliding window shrunk to 8 tokens so ordinary text crosses it, Llama plain.
_FAMILIES: dict[str, tuple[str, str, Any, int, dict[str, Any]]] = {
    "qwen3": ("Qwen3Config", "Qwen3Model", _qwen_tokenizer, 21, {"tie_word_embeddings": True}),
    "qwen2": ("Qwen2Config", "Qwen2Model", _qwen_tokenizer, 23, {}),
    "mistral": ("MistralConfig", "MistralModel", _llama_tokenizer, 22, {"sliding_window": 8}),
    "llama": ("LlamaConfig", "LlamaModel", _llama_tokenizer, 24, {}),
}


def build_decoder(
    out: Path,
    family: str = "qwen3",
    padding_side: str = "left",
    pooling: str = "lasttoken",
    outliers: bool = False,
    hidden: int = 32,
    config: dict[str, Any] | None = None,
) -> Replica:
    """A ``family`` decoder saved as its embedding model is: last-token pooling with the instruction prompts of
    Qwen3-Embedding (Qwen tokenizers) or e5-mistral (Llama tokenizers), or plain mean pooling without prompts;
    ``outliers`` injects synthetic outlier channels (with_outlier_channels); ``config`` sets more of the
    transformers config (rope_scaling, say)."""
    import torch
    import transformers

    config_name, model_name, make_tokenizer, seed, extra = _FAMILIES[family]
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(padding_side)
    # Qwen3's head_dim is its own setting: twice hidden / heads here, as Qwen3-Embedding-0.6B has 16 x 128 > 1024
    head_dim = {"head_dim": hidden // 2} if family == "qwen3" else {}
    settings = {**extra, **(config or {})}
    hf_config = _decoder_config(getattr(transformers, config_name), tokenizer, hidden, **head_dim, **settings)
    if tokenizer.bos_token_id is not None:
        hf_config.bos_token_id = tokenizer.bos_token_id
    model = _with_end_token_embedding(_louder(getattr(transformers, model_name)(hf_config)), tokenizer)
    with torch.no_grad():  # transformers zeroes Linear biases at init: Qwen2's q/k/v biases would prove nothing
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.3)
    if outliers:
        model = with_outlier_channels(model)
    prompts = None
    if pooling == "lasttoken":
        prompts = QWEN3_PROMPTS if make_tokenizer is _qwen_tokenizer else E5_MISTRAL_PROMPTS
    path = _save(out, model, tokenizer, pooling=pooling, prompts=prompts)
    return Replica(out.name, path, prompts=prompts or {}, extra={"padding_side": padding_side, "pooling": pooling})


@pytest.fixture(scope="session")
def qwen3_embedding(replicas_dir: Path) -> Replica:
    return build_decoder(replicas_dir / "qwen3-embedding")


@pytest.fixture(scope="session")
def e5_mistral(replicas_dir: Path) -> Replica:
    return build_decoder(replicas_dir / "e5-mistral", "mistral", padding_side="right")
