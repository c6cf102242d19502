"""Engine settings on CPU: the defaults, and the tuning profile that ``onnxembed tune`` measured for one model here.

In scope: the settings (sessions, intra-op threads, overlap, token budget, batch size), the defaults chosen from
the CPU, and finding, checking, reading and writing a profile. Not in scope: measuring (onnxembed/tune.py),
applying them (engine.py).

A profile is a small JSON file, ``onnxembed-tune.json`` beside the model, or, where the model directory is
read-only, ``$XDG_CACHE_HOME/onnxembed/tune/<model sha>-<cpu key>.json``. It holds for one model, one CPU and
one onnxruntime version; one measured elsewhere is ignored with a warning. Reading one never measures anything
(docs/performance.md#tuning-for-your-cpu).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from onnxembed.manifest import MANIFEST_NAME, Manifest
from onnxembed.runtime.batching import DEFAULT_MAX_BATCH_TOKENS
from onnxembed.runtime.cpu import CpuInfo, cpu_info

logger = logging.getLogger(__name__)

PROFILE_NAME = "onnxembed-tune.json"
PROFILE_FORMAT = 1


@dataclass(frozen=True)
class EngineSettings:
    """How an Encoder runs on CPU: ``sessions`` side by side with ``threads`` intra-op threads each (None:
    onnxruntime's default, one per core), ``overlap`` (tokenize ahead on other threads), and batches of at most
    ``batch_size`` texts and ``max_batch_tokens`` padded tokens."""

    sessions: int = 1
    threads: int | None = None
    overlap: bool = False
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS["CPUExecutionProvider"]
    batch_size: int = 32  # sentence-transformers' default; the best measured with the 1,024-token budget

    def describe(self) -> str:
        threads = "all" if self.threads is None else str(self.threads)
        overlap = "on" if self.overlap else "off"
        return (
            f"sessions={self.sessions} threads={threads} overlap={overlap} "
            f"max_batch_tokens={self.max_batch_tokens} batch_size={self.batch_size}"
        )


def default_settings(cpu: CpuInfo | None = None) -> EngineSettings:
    """The settings without a profile. They stay those measured best on Zen 4 and Zen 5 cores
    (docs/performance.md#tuning-for-your-cpu): one session on all cores keeps single-text latency and memory,
    and no measurement yet ties a different choice to a core count, cache size, vendor or ISA, so ``cpu``
    changes nothing today; ``onnxembed tune`` measures the rest on the host itself."""
    del cpu  # the hook where a choice measured on more than one vendor goes
    return EngineSettings()


def model_sha(model_dir: str | Path) -> str:
    """sha256 of the manifest and the graph files' names and sizes: cheap at load (no graph is read), and it
    changes with every export (the manifest records the export's accuracy figures and versions)."""
    directory = Path(model_dir)
    digest = hashlib.sha256((directory / MANIFEST_NAME).read_bytes())
    for name, variant in sorted(Manifest.read(directory).variants.items()):
        path = directory / variant.file
        size = path.stat().st_size if path.is_file() else -1
        digest.update(f"\0{name}\0{variant.file}\0{size}".encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    """$ONNXEMBED_CACHE_DIR, else $XDG_CACHE_HOME/onnxembed, else ~/.cache/onnxembed."""
    explicit = os.environ.get("ONNXEMBED_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnxembed"


def cached_profile_path(sha: str, cpu: CpuInfo) -> Path:
    return cache_dir() / "tune" / f"{sha[:16]}-{cpu.key}.json"


def check_profile_writable(model_dir: str | Path) -> None:
    """Raise OSError, before any measuring, when write_profile could write neither beside the model nor in the
    cache directory (the measurements would be lost at the end)."""
    if os.access(model_dir, os.W_OK):
        return
    folder = cached_profile_path(model_sha(model_dir), cpu_info()).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"the tuning profile can be written neither beside the model ({model_dir} is read-only) nor in the "
            f"cache folder {folder} ({error}); set ONNXEMBED_CACHE_DIR to a writable folder"
        ) from None
    if not os.access(folder, os.W_OK):
        raise OSError(f"the tuning profile's cache folder {folder} is read-only; set ONNXEMBED_CACHE_DIR")


def write_profile(model_dir: str | Path, profile: dict[str, Any]) -> Path:
    """Write ``profile`` beside the model, or in the cache directory when the model directory is read-only.
    Returns the path written. Atomic: a reader sees the old file or the new one."""
    text = json.dumps(profile, indent=2) + "\n"
    beside = Path(model_dir) / PROFILE_NAME
    try:
        _write_atomic(beside, text)
        return beside
    except OSError as error:
        cached = cached_profile_path(profile["model_sha"], cpu_info())
        logger.info("cannot write %s (%s); writing %s", beside, error, cached)
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(cached, text)
        return cached


def _write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def find_profile(model_dir: str | Path, stacklevel: int = 2) -> tuple[Path, dict[str, Any]] | None:
    """The profile that holds for this model, CPU and onnxruntime: beside the model, else in the cache.
    A profile that holds for another is ignored with a warning that says which and how to redo it
    (``stacklevel`` as warnings.warn's, counted from the caller)."""
    sha = model_sha(model_dir)
    cpu = cpu_info()
    for path in (Path(model_dir) / PROFILE_NAME, cached_profile_path(sha, cpu)):
        if not path.is_file():
            continue
        try:
            profile = json.loads(path.read_text(encoding="utf-8"))
            reason = _mismatch(profile, sha, cpu)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            reason = f"it cannot be read ({error})"
        if reason is None:
            return path, profile
        warnings.warn(
            f"ignoring the tuning profile {path}: {reason}; the defaults apply (rerun `onnxembed tune {model_dir}`)",
            stacklevel=stacklevel + 1,
        )
    return None


def _mismatch(profile: dict[str, Any], sha: str, cpu: CpuInfo) -> str | None:
    if profile.get("format") != PROFILE_FORMAT:
        return f"it has format {profile.get('format')!r}, this onnxembed reads {PROFILE_FORMAT}"
    if profile["model_sha"] != sha:
        return "it was measured on another export of the model (model sha differs)"
    if profile["cpu"]["key"] != cpu.key:
        other = profile["cpu"]
        return f"it was measured on another CPU ({other.get('model_name')!r}, {other.get('cores')} cores)"
    if profile["onnxruntime"] != ort.__version__:
        return f"it was measured with onnxruntime {profile['onnxruntime']}, this is {ort.__version__}"
    return None


def tuned_settings(profile: dict[str, Any], variant: str) -> EngineSettings | None:
    """The settings ``profile`` chose for ``variant`` (None: it did not measure that variant). A profile is a
    file anyone can edit: a shape or a value ``tune`` never writes raises ValueError saying which."""
    variants = profile.get("variants", {})
    entry = variants.get(variant) if isinstance(variants, dict) else None
    if entry is None:
        if not isinstance(variants, dict):
            raise ValueError("its 'variants' is not an object")
        return None
    chosen = entry.get("settings") if isinstance(entry, dict) else None
    if chosen is None:
        return None
    if not isinstance(chosen, dict):
        raise ValueError(f"the settings of {variant} are not an object")
    fields = set(asdict(EngineSettings()))
    settings = EngineSettings(**{key: value for key, value in chosen.items() if key in fields})
    _check_settings(settings, variant)
    return settings


def _check_settings(settings: EngineSettings, variant: str) -> None:
    from onnxembed._checks import positive_int, thread_count

    try:
        thread_count(settings.sessions, "sessions")
        if settings.threads is not None:
            thread_count(settings.threads, "threads")
        positive_int(settings.max_batch_tokens, "max_batch_tokens")
        positive_int(settings.batch_size, "batch_size")
    except ValueError as error:
        raise ValueError(f"{variant}: {error}") from None
    if not isinstance(settings.overlap, bool):
        raise ValueError(f"{variant}: overlap must be true or false; got {settings.overlap!r}")
    if settings.sessions > 1 and not settings.overlap:
        raise ValueError(f"{variant}: sessions {settings.sessions} side by side need overlap true")
