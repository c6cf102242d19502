"""Every seed architecture goes through every CPU variant, and each variant's recorded accuracy holds
against sentence-transformers on text the export never saw."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxembed import Encoder, export
from onnxembed.exporter.accuracy import compare
from tests.replicas import CORPUS, DATA, MIXED_TEXTS, REPLICA_FIXTURES, Replica


@pytest.mark.parametrize("name", REPLICA_FIXTURES)
def test_cpu_variants(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    replica: Replica = request.getfixturevalue(name)
    manifest = export(
        replica.path,
        tmp_path / "out",
        optimize=True,
        quantize="int8",
        int8_min_cosine=0.5,
        calibration_file=DATA / "multilingual.txt",
    )
    assert {"fp32", "optimized", "int8"} <= set(manifest.variants)
    texts = [*MIXED_TEXTS, *CORPUS[20:]]
    reference = SentenceTransformer(str(replica.path), device="cpu").encode(texts)
    optimized = compare(reference, Encoder(tmp_path / "out", variant="optimized").encode(texts))
    assert optimized["min_cosine"] >= 0.99999
    int8 = compare(reference, Encoder(tmp_path / "out", variant="int8").encode(texts))
    recorded = manifest.variants["int8"].accuracy
    # random tiny weights quantize worse than trained ones; the recorded mean must still describe new text
    assert int8["mean_cosine"] >= recorded["mean_cosine"] - 0.05, (int8, recorded["mean_cosine"])
