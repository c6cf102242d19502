"""``onnxembed tune``: measure, once, the CPU engine settings that suit one model on this host, and write a profile.

In scope: the trials (sessions per core against intra-op threads, overlap, token budget) on the model's own
CPU variants with a short built-in sample of real text, choosing among them, and the profile's contents.
Not in scope: where the profile lives and how it is read at load (runtime/profile.py), the engine itself.

Method (docs/performance.md#tuning-for-your-cpu): first the engines, at the default budget; then, on the
engine chosen, the token budgets. Candidates of a stage run in alternated rounds (a slow spell of a shared
host falls on all of them) and each rate is the median round. A candidate's score is the geometric mean of its
sentences/s and paragraphs/s over the default's; it replaces the default only when it scores at least
``MIN_GAIN`` (noise stays with the default) and, unless ``throughput_only``, when its single-text p50 latency
stays within ``MAX_LATENCY_LOSS`` of the default's (sessions of one thread each are faster on batches but
slower on one text).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from onnxembed.errors import InvalidArgumentError
from onnxembed.manifest import EMBEDDING, Manifest
from onnxembed.runtime.cpu import cpu_info
from onnxembed.runtime.encoder import Encoder
from onnxembed.runtime.profile import (
    PROFILE_FORMAT,
    EngineSettings,
    check_profile_writable,
    default_settings,
    model_sha,
    write_profile,
)

MIN_GAIN = 1.03
MAX_LATENCY_LOSS = 1.10
BUDGETS = (1024, 2048, 4096)
LATENCY_CALLS = 30
BUSY_LOAD_PER_CORE = 0.75
# The variants a CPU Encoder may load; the others (fp16, GPU-fused) are for GPUs.
CPU_VARIANTS = ("fp32", "optimized", "int8")


@dataclass
class Trial:
    """One candidate's measurements: rates per round, single-text latency."""

    settings: EngineSettings
    sentences_s: list[float]
    paragraphs_s: list[float]
    latency_s: list[float]

    def rates(self, sample: Mapping[str, Sequence[str]]) -> tuple[float, float]:
        return (
            len(sample["sentences"]) / statistics.median(self.sentences_s),
            len(sample["paragraphs"]) / statistics.median(self.paragraphs_s),
        )

    def latency_p50(self) -> float:
        return statistics.median(self.latency_s)


def builtin_sample(sentences: int = 256, paragraphs: int = 48) -> dict[str, list[str]]:
    """Real text not written here (the standard library's docstrings): short sentences and ~190-token paragraphs."""
    from onnxembed.exporter.calibration import paragraphs as docstring_paragraphs
    from onnxembed.exporter.calibration import sentences as docstring_sentences

    return {"sentences": docstring_sentences(sentences), "paragraphs": docstring_paragraphs(paragraphs)}


def engine_candidates(cores: int) -> list[EngineSettings]:
    """The default first, then overlap on one session, one session per core, and pairs of threads per session."""
    default = default_settings()
    candidates = [default, replace(default, overlap=True)]
    if cores > 1:
        candidates.append(replace(default, sessions=cores, threads=1, overlap=True))
    if cores >= 4 and cores % 2 == 0:
        candidates.append(replace(default, sessions=cores // 2, threads=2, overlap=True))
    return candidates


def budget_candidates(engine: EngineSettings) -> list[EngineSettings]:
    """``engine`` at each budget, with as many texts per batch as the default allows per 1,024 tokens."""
    default = default_settings()
    per_token = default.batch_size / default.max_batch_tokens
    return [
        replace(engine, max_batch_tokens=budget, batch_size=max(1, round(budget * per_token))) for budget in BUDGETS
    ]


def tune(
    model_dir: str | Path,
    *,
    variants: Sequence[str] | None = None,
    rounds: int = 3,
    throughput_only: bool = False,
    sample: dict[str, list[str]] | None = None,
    report: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """Measure the settings for each CPU variant of ``model_dir`` and write the profile.

    Args:
        model_dir: A directory written by ``onnxembed export``.
        variants: The variants to tune (default: every CPU variant the export has: fp32, optimized, int8).
        rounds: Alternated rounds per stage; rates are the median round.
        throughput_only: Choose on texts/s alone, even where a single text gets slower.
        sample: {"sentences": [...], "paragraphs": [...]} to time (default: :func:`builtin_sample`).
        report: Called with one line per trial.

    Returns:
        (the profile's path, the profile).

    Raises:
        InvalidArgumentError: A variant that is not in the export or not for CPU, or ``rounds`` < 1.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InvalidArgumentError(f"rounds must be a positive int; got {rounds!r}")
    manifest = Manifest.read(model_dir)
    if manifest.task != EMBEDDING:
        raise InvalidArgumentError(f"{model_dir} is a {manifest.task} export; onnxembed tune covers embedding models")
    if manifest.architecture == "StaticEmbedding":
        raise InvalidArgumentError(f"{model_dir} is a StaticEmbedding model: it runs no session, nothing to tune")
    available = [name for name in CPU_VARIANTS if name in manifest.variants]
    chosen = list(variants) if variants is not None else available
    unknown = [name for name in chosen if name not in available]
    if unknown or not chosen:
        raise InvalidArgumentError(f"cannot tune variants {unknown}: {model_dir} has CPU variants {available}")
    # what would fail at the end, checked before minutes of measuring
    missing = [name for name in chosen if not (Path(model_dir) / manifest.variants[name].file).is_file()]
    if missing:
        files = ", ".join(manifest.variants[name].file for name in missing)
        raise InvalidArgumentError(f"variants {missing} of {model_dir} have no graph file ({files}); tune the others")
    check_profile_writable(model_dir)
    sample = sample if sample is not None else builtin_sample()
    cpu = cpu_info()
    started, load_start = time.time(), os.getloadavg()
    report(f"tuning {model_dir} on {cpu.describe()}; load average {load_start[0]:.2f}")
    if load_start[0] > BUSY_LOAD_PER_CORE * cpu.cores:
        # other processes' threads preempt onnxruntime's, which wait on each other: the choice would be theirs
        report(f"note: load average {load_start[0]:.2f} on {cpu.cores} cores: others are using this machine")
    results = {
        name: _tune_variant(Path(model_dir), name, cpu.cores, rounds, throughput_only, sample, report)
        for name in chosen
    }
    import onnxruntime as ort

    from onnxembed import __version__

    profile = {
        "format": PROFILE_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_sha": model_sha(model_dir),
        "cpu": cpu.to_dict(),
        "onnxruntime": ort.__version__,
        "onnxembed": __version__,
        "method": {
            "rounds": rounds,
            "throughput_only": throughput_only,
            "min_gain": MIN_GAIN,
            "max_latency_loss": MAX_LATENCY_LOSS,
            "texts": {corpus: len(texts) for corpus, texts in sample.items()},
            "seconds": round(time.time() - started, 1),
            "load_average": [load_start[0], os.getloadavg()[0]],
        },
        "variants": results,
    }
    return write_profile(model_dir, profile), profile


def _tune_variant(
    model_dir: Path,
    variant: str,
    cores: int,
    rounds: int,
    throughput_only: bool,
    sample: dict[str, list[str]],
    report: Callable[[str], None],
) -> dict[str, Any]:
    engines = _stage(model_dir, variant, engine_candidates(cores), rounds, sample, report)
    engine = _choose(engines, sample, throughput_only)
    # the chosen engine again beside the bigger budgets: a stage compares only what ran in its own rounds
    budgets = _stage(model_dir, variant, budget_candidates(engine.settings), rounds, sample, report)
    best = _choose(budgets, sample, throughput_only)
    report(f"{variant}: chose {best.settings.describe()}")
    rows = []
    for stage, trials in (("engine", engines), ("budget", budgets)):
        for trial in trials:
            sentences, paragraphs = trial.rates(sample)
            rows.append(
                {
                    "stage": stage,
                    **asdict(trial.settings),
                    "sentences_per_s": round(sentences, 1),
                    "paragraphs_per_s": round(paragraphs, 2),
                    "latency_p50_ms": round(trial.latency_p50() * 1e3, 3),
                    "score_vs_first": round(_score(trial, trials[0], sample), 3),
                    "chosen": trial is best,
                }
            )
    return {"settings": asdict(best.settings), "trials": rows}


def _stage(
    model_dir: Path,
    variant: str,
    candidates: list[EngineSettings],
    rounds: int,
    sample: dict[str, list[str]],
    report: Callable[[str], None],
) -> list[Trial]:
    """Each candidate on the sample in alternated rounds, after one untimed warm-up."""
    encoders = [
        Encoder(
            model_dir,
            provider="cpu",
            variant=variant,
            threads=settings.threads,
            overlap=settings.overlap,
            sessions=settings.sessions,
            profile=False,
        )
        for settings in candidates
    ]
    trials = [Trial(settings, [], [], []) for settings in candidates]
    for encoder, trial in zip(encoders, trials, strict=True):
        for texts in sample.values():
            _encode(encoder, trial.settings, texts)
    for round_index in range(rounds):
        for encoder, trial in zip(encoders, trials, strict=True):
            trial.sentences_s.append(_encode(encoder, trial.settings, sample["sentences"]))
            trial.paragraphs_s.append(_encode(encoder, trial.settings, sample["paragraphs"]))
            for text in sample["sentences"][:LATENCY_CALLS]:
                trial.latency_s.append(_encode(encoder, trial.settings, [text]))
        report(f"{variant}: round {round_index + 1}/{rounds} of {len(trials)} trials done")
    for trial in trials:
        sentences, paragraphs = trial.rates(sample)
        report(
            f"{variant}: {trial.settings.describe()}: {sentences:.1f} sentences/s, {paragraphs:.1f} paragraphs/s, "
            f"single text p50 {trial.latency_p50() * 1e3:.2f} ms"
        )
    return trials


def _encode(encoder: Encoder, settings: EngineSettings, texts: list[str]) -> float:
    start = time.perf_counter()
    encoder.encode(texts, batch_size=settings.batch_size, max_batch_tokens=settings.max_batch_tokens)
    return time.perf_counter() - start


def _score(trial: Trial, default: Trial, sample: dict[str, list[str]]) -> float:
    """Geometric mean of the trial's sentences/s and paragraphs/s over the default's."""
    ratios = [own / base for own, base in zip(trial.rates(sample), default.rates(sample), strict=True)]
    return math.sqrt(ratios[0] * ratios[1])


def _choose(trials: list[Trial], sample: dict[str, list[str]], throughput_only: bool) -> Trial:
    """The best-scoring trial that beats the first (the incumbent) by MIN_GAIN without losing single-text
    latency past MAX_LATENCY_LOSS; else the first."""
    incumbent = trials[0]
    eligible = [
        trial
        for trial in trials[1:]
        if _score(trial, incumbent, sample) >= MIN_GAIN
        and (throughput_only or trial.latency_p50() <= MAX_LATENCY_LOSS * incumbent.latency_p50())
    ]
    return max(eligible, key=lambda trial: _score(trial, incumbent, sample), default=incumbent)
