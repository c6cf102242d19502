"""Export a model over 2 GB (XLM-RoBERTa-large shapes, random weights) and check it, once, by hand.

    python bench/export_large.py [WORKDIR]

Builds a SentenceTransformer with XLMRobertaModel of XLM-R-large's shape (24 layers, 1024 wide,
250,002-token vocabulary: ~560M parameters, ~2.2 GB in fp32), exports it with onnxembed (which must
choose external data on its own), and prints file sizes, time, peak RSS and the recorded accuracy.
Needs ~12 GB of memory and several minutes on 2 cores. Asserts nothing; prints what it saw.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path


def build(workdir: Path) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tokenizer_models
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    torch.manual_seed(0)
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁w{i}", -float(i % 1000) / 100) for i in range(250_002 - len(vocab) - 1)] + [("<mask>", 0.0)]
    raw = Tokenizer(tokenizer_models.Unigram(vocab, unk_id=3))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=raw)
    config = XLMRobertaConfig(
        vocab_size=250_002,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=514,
        pad_token_id=1,
        type_vocab_size=1,
    )
    hf_dir = workdir / "xlmr-large-hf"
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, models.Pooling(1024, pooling_mode="mean")], device="cpu")
    model.save(str(workdir / "xlmr-large"))
    return workdir / "xlmr-large"


def main() -> None:
    import onnxembed

    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    start = time.perf_counter()
    src = build(workdir)
    print(f"built {src} in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    manifest = onnxembed.export(src, workdir / "xlmr-large-onnx", overwrite=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    print(f"exported in {time.perf_counter() - start:.0f} s; peak RSS {peak_mb} MB")
    for path in sorted((workdir / "xlmr-large-onnx" / "onnx").iterdir()):
        print(f"  {path.name}: {path.stat().st_size / 1e9:.2f} GB")
    print(f"  source: {manifest.source}")
    print(f"  accuracy: {manifest.variants['fp32'].accuracy}")


if __name__ == "__main__":
    main()
