"""``onnxembed tune``: one line per trial, the profile written beside the model and read by the next load; errors
are one line. No time is asserted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from onnxembed import Encoder
from onnxembed.cli import main
from onnxembed.runtime.cpu import cpu_info
from onnxembed.runtime.profile import PROFILE_NAME
from onnxembed.tune import BUDGETS, engine_candidates


@pytest.fixture
def model_dir(tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ONNXEMBED_CACHE_DIR", str(tmp_path / "cache"))
    return Path(shutil.copytree(tiny_export, tmp_path / "model"))


def test_tune_prints_each_trial_and_writes_the_profile(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", str(model_dir), "--rounds", "1", "--variant", "fp32"]) == 0
    captured = capsys.readouterr()
    trials = [line for line in captured.err.splitlines() if "sentences/s" in line]
    assert len(trials) == len(engine_candidates(cpu_info().cores)) + len(BUDGETS)
    assert all(line.startswith("fp32: sessions=") and "single text p50" in line for line in trials)
    assert cpu_info().model_name in captured.err.splitlines()[0]
    assert f"wrote {model_dir / PROFILE_NAME}" in captured.err
    profile = json.loads((model_dir / PROFILE_NAME).read_text())
    settings = profile["variants"]["fp32"]["settings"]
    assert captured.out == "fp32\t" + " ".join(f"{key}={value}" for key, value in settings.items()) + "\n"
    assert Encoder(model_dir, provider="cpu").profile_path == model_dir / PROFILE_NAME


def test_tune_errors_are_one_line(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reranker = Path(shutil.copytree(model_dir, tmp_path / "reranker"))
    manifest = json.loads((reranker / "onnxembed.json").read_text())
    (reranker / "onnxembed.json").write_text(json.dumps({**manifest, "task": "reranker", "num_labels": 1}))
    cases = [
        (["tune", str(model_dir), "--variant", "int8"], "cannot tune variants ['int8']"),
        (["tune", str(model_dir), "--rounds", "0"], "rounds must be a positive int"),
        (["tune", str(reranker)], "is a reranker export; onnxembed tune covers embedding models"),
        (["tune", str(tmp_path / "missing")], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (model_dir / PROFILE_NAME).exists()
