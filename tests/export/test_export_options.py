"""Export options and refusals: external data, adapters and their base, unsupported modules and
architectures, a graph that does not match its source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from onnxembed import Encoder
from onnxembed.exporter import ExportVerificationError, UnsupportedModelError, export
from onnxembed.exporter.quantize import INT8_RECIPES
from tests.replicas import DATA, MIXED_TEXTS, Replica

CALIBRATION = DATA / "multilingual.txt"


def _copy(replica: Replica, tmp_path: Path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(replica.path, copy)
    return copy


def _encode_reference(path: Path, texts: list[str], **kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, **kwargs)


def test_external_data(chinese_bert: Replica, tmp_path: Path) -> None:
    manifest = export(chinese_bert.path, tmp_path / "out", external_data=True)
    assert manifest.source["external_data"] is True
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(chinese_bert.path))
    embedding_table_bytes = config.vocab_size * config.hidden_size * 4
    assert (tmp_path / "out" / "onnx" / "model.onnx_data").stat().st_size >= embedding_table_bytes
    actual = Encoder(tmp_path / "out", provider="cpu").encode(MIXED_TEXTS)
    np.testing.assert_allclose(actual, _encode_reference(chinese_bert.path, MIXED_TEXTS), atol=1e-4, rtol=0)


def test_int8_of_an_external_data_graph_leaves_only_its_own_files(chinese_bert: Replica, tmp_path: Path) -> None:
    # graphs over 2 GB keep their weights outside; onnxruntime's quantizer names them NAME.data, and every
    # recipe tried (a budget none meets: all six) must go with its data, split graphs included
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="no int8 recipe met"):
        manifest = export(
            chinese_bert.path,
            out,
            external_data=True,
            quantize="int8",
            int8_min_cosine=1.0,
            calibration_file=CALIBRATION,
        )
    int8 = manifest.variants["int8"]
    assert len(int8.accuracy["tried"]) == len(INT8_RECIPES)
    names = sorted(path.name for path in (out / "onnx").iterdir())
    int8_name = Path(int8.file).name
    assert names == sorted(["model.onnx", "model.onnx_data", int8_name, int8_name + "_data"])
    actual = Encoder(out, provider="cpu", variant="int8").encode(MIXED_TEXTS)
    reference = Encoder(out, provider="cpu", variant="fp32").encode(MIXED_TEXTS)
    cosine = (actual * reference).sum(axis=1)
    assert cosine.min() > 0.9


def test_manifest_records_what_the_runtime_needs(xlm_roberta: Replica, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    manifest = export(xlm_roberta.path, tmp_path / "out")
    reference = SentenceTransformer(str(xlm_roberta.path), device="cpu")
    recorded = json.loads((tmp_path / "out" / "onnxembed.json").read_text())
    assert recorded["input_names"] == ["input_ids", "attention_mask"]  # XLM-R takes no token_type_ids
    assert recorded["dim"] == reference.get_sentence_embedding_dimension()
    assert recorded["max_seq_length"] == reference.max_seq_length
    assert recorded["architecture"] == "XLMRobertaModel"
    accuracy = manifest.variants["fp32"].accuracy
    assert accuracy["min_cosine"] >= 0.99999 and accuracy["max_abs_diff"] <= 1e-4
    assert {"torch", "transformers", "onnxruntime"} <= set(recorded["versions"])


def test_adapter_changes_the_embeddings(roberta_lora: Replica) -> None:
    # Without this, a merge that did nothing would still match a base model whose LoRA B were zero.
    texts = MIXED_TEXTS[:6]
    with_adapter = _encode_reference(roberta_lora.path, texts)
    base = _encode_reference(roberta_lora.extra["base"], texts)
    assert np.abs(with_adapter - base).max() > 1e-2


def test_adapter_base_not_available_offline(roberta_lora: Replica, tmp_path: Path) -> None:
    src = _copy(roberta_lora, tmp_path)
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/not-in-the-cache"
    (src / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="base model 'someone/not-in-the-cache'.*not available offline.*--base-model"):
        export(src, tmp_path / "out", verify=False)
    # --base-model names it instead; the result matches the original adapter model.
    export(src, tmp_path / "out", base_model=roberta_lora.extra["base"], verify=False)
    expected = _encode_reference(roberta_lora.path, MIXED_TEXTS, prompt_name="query")
    actual = Encoder(tmp_path / "out", provider="cpu").encode(MIXED_TEXTS, prompt_name="query")
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_peft_native_adapter_layout(roberta_lora: Replica, tmp_path: Path) -> None:
    """An adapter saved by peft itself (keys prefixed base_model.model.) merges as peft merges it."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModel

    src = _copy(roberta_lora, tmp_path)
    base = AutoModel.from_pretrained(str(roberta_lora.extra["base"]))
    peft_model = peft.PeftModel.from_pretrained(base, str(roberta_lora.path))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (src / name).unlink()
    peft_model.save_pretrained(str(tmp_path / "peft"))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(tmp_path / "peft" / name, src / name)
    export(src, tmp_path / "out", verify=False)
    expected = _encode_reference(roberta_lora.path, MIXED_TEXTS)
    np.testing.assert_allclose(Encoder(tmp_path / "out").encode(MIXED_TEXTS), expected, atol=1e-4, rtol=0)


def test_unsupported_module_is_named(chinese_bert: Replica, tmp_path: Path) -> None:
    src = _copy(chinese_bert, tmp_path)
    modules = json.loads((src / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_LSTM", "type": "sentence_transformers.models.LSTM"})
    (src / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="sentence_transformers.models.LSTM"):
        export(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_named(chinese_bert: Replica, tmp_path: Path) -> None:
    from transformers import AlbertConfig

    src = _copy(chinese_bert, tmp_path)
    AlbertConfig(vocab_size=100, hidden_size=32, num_attention_heads=4, intermediate_size=64).save_pretrained(src)
    with pytest.raises(UnsupportedModelError, match="AlbertModel|albert"):
        export(src, tmp_path / "out")


def test_not_a_sentence_transformer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modules.json is missing"):
        export(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="neither a directory nor a model in the local Hugging Face cache"):
        export("someone/no-such-model-anywhere", tmp_path / "out")


def test_refuses_to_overwrite(chinese_bert: Replica, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export(chinese_bert.path, out)
    with pytest.raises(FileExistsError, match="not a model directory"):
        export(chinese_bert.path, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_failed_export_leaves_no_half_written_directory(
    chinese_bert: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace fails after the tokenizer and modules.json were written: a directory export created is gone, one
    the user made is left empty, and the next run needs no overwrite."""
    import onnxembed.exporter.onnx_export as onnx_export

    real = onnx_export.export_onnx

    def fails(*args, **kwargs):
        raise RuntimeError("stand-in trace failure")

    monkeypatch.setattr(onnx_export, "export_onnx", fails)
    with pytest.raises(RuntimeError, match="stand-in"):
        export(chinese_bert.path, tmp_path / "new" / "out")
    assert not (tmp_path / "new" / "out").exists()
    made = tmp_path / "made"
    made.mkdir()
    with pytest.raises(RuntimeError, match="stand-in"):
        export(chinese_bert.path, made)
    assert made.is_dir() and not any(made.iterdir())
    monkeypatch.setattr(onnx_export, "export_onnx", real)
    assert export(chinese_bert.path, made, verify=False).dim == 32


def test_a_wrong_graph_fails_verification(chinese_bert: Replica, cls_pooling_bert: Replica, tmp_path: Path) -> None:
    """Verification compares against the source: a graph from another model must not pass."""
    import torch
    from transformers import AutoModel

    from onnxembed.exporter.verify import verify_graph

    export(chinese_bert.path, tmp_path / "out", verify=False)
    other = AutoModel.from_pretrained(str(cls_pooling_bert.path), attn_implementation="eager").eval()
    same = AutoModel.from_pretrained(str(chinese_bert.path), attn_implementation="eager").eval()
    names = ("input_ids", "attention_mask", "token_type_ids")
    graph = tmp_path / "out" / "onnx" / "model.onnx"
    assert verify_graph(same, graph, names, pad_token_id=1, max_len=256, atol=1e-4) <= 1e-4
    with torch.no_grad(), pytest.raises(ExportVerificationError, match="disagrees with the torch model"):
        verify_graph(other, graph, names, pad_token_id=1, max_len=256, atol=1e-4)


def test_model_name_from_the_local_hf_cache(chinese_bert: Replica, tmp_path: Path, monkeypatch) -> None:
    """SRC may be a hub name that is already cached; it is looked up offline."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--someone--tiny-chinese" / "snapshots" / "0123abcd"
    shutil.copytree(chinese_bert.path, snapshot)
    (tmp_path / "hub" / "models--someone--tiny-chinese" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-chinese" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    manifest = export("someone/tiny-chinese", tmp_path / "out")
    assert manifest.source["path"] == str(snapshot)
    assert manifest.variants["fp32"].accuracy["min_cosine"] >= 0.99999


def test_models_own_truncate_dim(chinese_bert: Replica, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    src = tmp_path / "truncating"
    SentenceTransformer(str(chinese_bert.path), device="cpu", truncate_dim=20).save(str(src))
    assert json.loads((src / "config_sentence_transformers.json").read_text())["truncate_dim"] == 20
    export(src, tmp_path / "out")
    encoder = Encoder(tmp_path / "out")
    assert encoder.dim == 20
    expected = SentenceTransformer(str(src), device="cpu").encode(MIXED_TEXTS)
    np.testing.assert_allclose(encoder.encode(MIXED_TEXTS), expected, atol=1e-4, rtol=0)


def test_auto_exporter_falls_back_to_dynamo_when_the_trace_fails_verification(
    chinese_bert: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxembed.exporter.verify as verify

    real = verify.verify_graph
    calls: list[Path] = []

    def first_fails(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            raise ExportVerificationError("stand-in for a trace that dropped the mask")
        return real(*args, **kwargs)

    monkeypatch.setattr(verify, "verify_graph", first_fails)
    manifest = export(chinese_bert.path, tmp_path / "out")
    assert len(calls) == 2 and manifest.source["exporter"] == "dynamo"
    expected = _encode_reference(chinese_bert.path, MIXED_TEXTS)
    np.testing.assert_allclose(Encoder(tmp_path / "out").encode(MIXED_TEXTS), expected, rtol=0, atol=1e-4)


def test_explicit_exporter_does_not_fall_back(chinese_bert: Replica, tmp_path: Path, monkeypatch) -> None:
    import onnxembed.exporter.verify as verify

    def fails(*args, **kwargs):
        raise ExportVerificationError("stand-in")

    monkeypatch.setattr(verify, "verify_graph", fails)
    with pytest.raises(ExportVerificationError, match="stand-in"):
        export(chinese_bert.path, tmp_path / "out", exporter="torchscript")
