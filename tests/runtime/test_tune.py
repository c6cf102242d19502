"""Tuning profiles: what ``onnxembed tune`` writes, and how Encoder reads it. Correctness only: no time is asserted.

The oracle for embeddings is sentence-transformers' own encode; a tuned engine must also give the default
engine's vectors within fp32 rounding. Every test tunes a copy of the tiny export (the shared one must stay
without a profile) and keeps the cache directory in tmp_path.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from onnxembed import Encoder
from onnxembed.errors import InvalidArgumentError
from onnxembed.runtime import profile as profile_module
from onnxembed.runtime.cpu import cpu_info
from onnxembed.runtime.profile import PROFILE_NAME, EngineSettings, cached_profile_path, model_sha, write_profile
from onnxembed.tune import budget_candidates, engine_candidates, tune
from tests.replicas import CORPUS, LONG_TEXT, MIXED_TEXTS, Replica

TEXTS = [*MIXED_TEXTS, LONG_TEXT, *CORPUS[:40]]
SAMPLE = {"sentences": [text[:60] for text in CORPUS[:40]], "paragraphs": [LONG_TEXT] * 4}
# Every setting the tuner can choose differs from the default here: two sessions of one thread, overlap, a
# bigger budget, and batches small enough that the texts split differently.
TUNED = EngineSettings(sessions=2, threads=1, overlap=True, max_batch_tokens=2048, batch_size=3)


@pytest.fixture(scope="module")
def reference(chinese_bert: Replica):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(chinese_bert.path), device="cpu")


@pytest.fixture
def model_dir(tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ONNXEMBED_CACHE_DIR", str(tmp_path / "cache"))
    return Path(shutil.copytree(tiny_export, tmp_path / "model"))


def _profile(model_dir: Path, settings: EngineSettings = TUNED, **changes: Any) -> dict[str, Any]:
    """A profile as tune writes it, with ``settings`` chosen for fp32 and ``changes`` on top."""
    return {
        "format": profile_module.PROFILE_FORMAT,
        "model_sha": model_sha(model_dir),
        "cpu": cpu_info().to_dict(),
        "onnxruntime": ort.__version__,
        "variants": {"fp32": {"settings": asdict(settings), "trials": []}},
        **changes,
    }


def _no_warning_encoder(model_dir: Path, **options: Any) -> Encoder:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Encoder(model_dir, provider="cpu", **options)


def test_tuned_engine_gives_the_default_vectors_and_sentence_transformers(model_dir: Path, reference) -> None:
    default = Encoder(model_dir, provider="cpu").encode(TEXTS)
    write_profile(model_dir, _profile(model_dir))
    tuned = _no_warning_encoder(model_dir)
    assert tuned.settings == TUNED and tuned.profile_path == model_dir / PROFILE_NAME
    assert len(tuned._sessions) == 2
    vectors = tuned.encode(TEXTS)
    np.testing.assert_allclose(vectors, default, rtol=0, atol=1e-5)
    np.testing.assert_allclose(vectors, reference.encode(TEXTS), rtol=0, atol=1e-4)


def test_every_candidate_the_tuner_runs_gives_the_default_vectors(model_dir: Path) -> None:
    default = Encoder(model_dir, provider="cpu", profile=False).encode(TEXTS)
    candidates = [*engine_candidates(4), *budget_candidates(TUNED)]
    assert len({asdict(settings).values().__repr__() for settings in candidates}) == len(candidates)
    for settings in candidates:
        encoder = Encoder(
            model_dir,
            provider="cpu",
            threads=settings.threads,
            overlap=settings.overlap,
            sessions=settings.sessions,
            profile=False,
        )
        vectors = encoder.encode(TEXTS, batch_size=settings.batch_size, max_batch_tokens=settings.max_batch_tokens)
        np.testing.assert_allclose(vectors, default, rtol=0, atol=1e-5, err_msg=settings.describe())


def test_tune_writes_a_profile_that_encoder_reads(model_dir: Path) -> None:
    lines: list[str] = []
    path, written = tune(model_dir, rounds=1, sample=SAMPLE, report=lines.append)
    assert path == model_dir / PROFILE_NAME
    profile = json.loads(path.read_text())
    assert profile == written
    assert profile["cpu"]["key"] == cpu_info().key and profile["cpu"]["model_name"] == cpu_info().model_name
    assert profile["onnxruntime"] == ort.__version__ and profile["model_sha"] == model_sha(model_dir)
    trials = profile["variants"]["fp32"]["trials"]
    # one line per trial, one per round of each stage, and the variant's choice
    assert len(trials) == len(engine_candidates(cpu_info().cores)) + 3
    assert len([line for line in lines if "sentences/s" in line]) == len(trials)
    assert len([line for line in lines if "round 1/1" in line]) == 2 and lines[-1].startswith("fp32: chose ")
    assert sum(trial["chosen"] for trial in trials) == 1
    assert all(trial["sentences_per_s"] > 0 and trial["latency_p50_ms"] > 0 for trial in trials)
    chosen = EngineSettings(**profile["variants"]["fp32"]["settings"])
    encoder = _no_warning_encoder(model_dir)
    assert encoder.settings == chosen and encoder.profile_path == path


def test_explicit_arguments_win(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_profile(model_dir, _profile(model_dir))
    # any one of threads, sessions, overlap given: the engine is the caller's, not the profile's
    for options in ({"threads": 1}, {"sessions": 1}, {"overlap": False}):
        encoder = Encoder(model_dir, provider="cpu", **options)
        assert len(encoder._sessions) == 1 and encoder._runner is None, options
        # .settings says what runs, not what the profile chose
        assert (encoder.settings.sessions, encoder.settings.overlap) == (1, False), options
        assert encoder.settings.threads == options.get("threads")
    assert len(Encoder(model_dir, provider="cpu", profile=False)._sessions) == 1
    encoder = Encoder(model_dir, provider="cpu", threads=1, sessions=1)  # what `onnxembed serve` builds on CPU
    planned: list[tuple[int, int]] = []
    real_plan = encoder._plan

    def spy(texts: list[str], batch_size: int, max_batch_tokens: int, prompt: str) -> Any:
        planned.append((batch_size, max_batch_tokens))
        return real_plan(texts, batch_size, max_batch_tokens, prompt)

    monkeypatch.setattr(encoder, "_plan", spy)
    encoder.encode(TEXTS)
    encoder.encode(TEXTS, batch_size=7, max_batch_tokens=300)
    list(encoder._batches(TEXTS))  # the server's path
    assert planned == [(3, 2048), (7, 300), (3, 2048)]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"model_sha": "0" * 64}, "another export"),
        ({"cpu": {**cpu_info().to_dict(), "key": "0" * 16, "model_name": "Other CPU"}}, "another CPU ('Other CPU'"),
        ({"onnxruntime": "0.0.1"}, "onnxruntime 0.0.1"),
        ({"format": 99}, "format 99"),
    ],
)
def test_a_profile_measured_elsewhere_is_ignored_with_a_warning(model_dir: Path, change: dict, says: str) -> None:
    write_profile(model_dir, _profile(model_dir, **change))
    with pytest.warns(
        UserWarning, match=f"ignoring the tuning profile .*{PROFILE_NAME}: it .*{re.escape(says)}"
    ) as seen:
        encoder = Encoder(model_dir, provider="cpu")
    assert seen[0].filename == __file__  # the warning points at the Encoder(...) line
    assert encoder.settings == EngineSettings() and encoder.profile_path is None
    assert len(encoder._sessions) == 1


def test_a_corrupt_profile_is_ignored_with_a_warning(model_dir: Path) -> None:
    (model_dir / PROFILE_NAME).write_text("{not json")
    with pytest.warns(UserWarning, match="cannot be read"):
        assert Encoder(model_dir, provider="cpu").profile_path is None


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"sessions": 0}, "sessions must be a positive integer"),
        ({"threads": -3}, "threads must be a positive integer"),
        ({"batch_size": 1.5}, "batch_size must be a positive integer"),
        ({"max_batch_tokens": "big"}, "max_batch_tokens must be a positive integer"),
        ({"sessions": 2, "overlap": False}, "need overlap true"),
        ({"sessions": 10**6, "overlap": True}, "more than 4 per logical CPU"),  # would open sessions until OOM
        ([1, 2], "not an object"),
    ],
)
def test_a_profile_with_values_tune_never_writes_is_ignored_with_a_warning(
    model_dir: Path, settings: Any, says: str
) -> None:
    """A profile is a file anyone may edit: its values are checked as they load, and blamed on the profile, not on
    arguments the caller never gave (the server took a string budget and answered every request with a 500)."""
    profile = _profile(model_dir)
    if isinstance(settings, dict):
        profile["variants"]["fp32"]["settings"].update(settings)
    else:
        profile["variants"]["fp32"]["settings"] = settings
    write_profile(model_dir, profile)
    with pytest.warns(UserWarning, match=f"ignoring the tuning profile .*{PROFILE_NAME}: .*{re.escape(says)}"):
        encoder = Encoder(model_dir, provider="cpu")
    assert encoder.settings == EngineSettings() and encoder.profile_path is None
    profile["variants"] = []
    write_profile(model_dir, profile)
    with pytest.warns(UserWarning, match="'variants' is not an object"):
        assert Encoder(model_dir, provider="cpu").profile_path is None


def test_threads_past_the_cores_are_refused(model_dir: Path) -> None:
    """Thousands of intra-op threads kept onnxruntime busy for minutes instead of failing."""
    from onnxembed import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="threads=100000 is more than 4 per logical CPU"):
        Encoder(model_dir, provider="cpu", threads=100_000, profile=False)
    with pytest.raises(InvalidArgumentError, match="sessions=100000 is more than 4 per logical CPU"):
        Encoder(model_dir, provider="cpu", threads=1, sessions=100_000, overlap=True, profile=False)


def test_a_variant_the_profile_did_not_measure_keeps_the_defaults(model_dir: Path) -> None:
    profile = _profile(model_dir)
    profile["variants"] = {"int8": profile["variants"]["fp32"]}
    write_profile(model_dir, profile)
    encoder = _no_warning_encoder(model_dir)
    assert encoder.variant == "fp32" and encoder.settings == EngineSettings() and encoder.profile_path is None


def test_read_only_model_dir_writes_to_the_cache(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    # Mode bits do not stop root (CI runs as root), so the model directory refuses new files here instead.
    real_mkstemp = tempfile.mkstemp

    def read_only(*args: Any, dir: str | Path | None = None, **options: Any) -> tuple[int, str]:  # noqa: A002
        if dir is not None and Path(dir) == model_dir:
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **options)

    monkeypatch.setattr(profile_module.tempfile, "mkstemp", read_only)
    path, _ = tune(model_dir, rounds=1, sample=SAMPLE, report=lambda line: None)
    assert path == cached_profile_path(model_sha(model_dir), cpu_info())
    assert path.is_relative_to(tmp_path / "cache") and not (model_dir / PROFILE_NAME).exists()
    assert _no_warning_encoder(model_dir).profile_path == path


def test_tune_refuses_what_it_cannot_tune(model_dir: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"cannot tune variants \['fp16'\].*CPU variants \['fp32'\]"):
        tune(model_dir, variants=["fp16"], sample=SAMPLE)
    with pytest.raises(InvalidArgumentError, match="rounds must be a positive int"):
        tune(model_dir, rounds=0, sample=SAMPLE)
    assert not (model_dir / PROFILE_NAME).exists()


def test_tune_refuses_before_measuring_what_would_fail_at_the_end(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    # a variant whose graph file is gone
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    (copy / "onnx" / "model.onnx").unlink()
    with pytest.raises(InvalidArgumentError, match=r"variants \['fp32'\] .* have no graph file \(onnx/model.onnx\)"):
        tune(copy, rounds=1, sample=SAMPLE, report=lines.append)
    # a read-only model folder and a cache folder that cannot be made (a file is in its way)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ONNXEMBED_CACHE_DIR", str(tmp_path / "a-file"))
    real_access = profile_module.os.access
    monkeypatch.setattr(
        profile_module.os, "access", lambda path, mode: Path(path) != model_dir and real_access(path, mode)
    )
    with pytest.raises(OSError, match="neither beside the model .* nor in the cache folder .*ONNXEMBED_CACHE_DIR"):
        tune(model_dir, rounds=1, sample=SAMPLE, report=lines.append)
    assert lines == []  # nothing was measured


def test_the_cpu_key_tells_cpus_apart_by_what_picks_the_kernels() -> None:
    here = cpu_info()
    assert here.cores >= 1 and here.key == cpu_info().key
    others = [
        replace(here, cores=here.cores + 1),
        replace(here, flags=(*here.flags, "avx512_vnni") if "avx512_vnni" not in here.flags else ()),
        replace(here, vendor="GenuineIntel" if here.vendor != "GenuineIntel" else "AuthenticAMD"),
        replace(here, model=here.model + "0"),
    ]
    assert len({here.key, *(other.key for other in others)}) == 1 + len(others)
    # caches are recorded, not keyed: vendor, family and model already name the part
    assert replace(here, cache_bytes={"L3": 1}).key == here.key
