"""The job record of an OUTPUT folder: what was embedded with what, who owns which file, one writer at a time.

``_job.json`` records the settings that decide what goes in which part, the model (the sha256 of its
manifest and the variant the Encoder chose) and every input (name relative to INPUT, size, content hash).
A rerun that differs in any of them is refused, naming what changed, rather than mixing results in one
OUTPUT; ``restart`` removes our files first. Ours are only the names below: anything else in OUTPUT is left
alone and never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onnxembed.corpus.inputs import CorpusError, InputFile
from onnxembed.manifest import MANIFEST_NAME

logger = logging.getLogger(__name__)

JOB_FILE = "_job.json"
ERRORS_FILE = "_errors.jsonl"
JOB_FORMAT = 2
# at least 5 and 6 digits: zero-padded to those widths, longer past 99,999 files or 999,999 chunks
PART_FILE = re.compile(r"part-\d{5,}-\d{6,}\.parquet")
PART_FOLDER = re.compile(r"part-\d{5,}")
TEMPORARY = re.compile(r"\.(part-\d{5,}(-\d{6,}\.parquet)?|_job\.json|_errors\.jsonl)\.tmp-\d+")


def temporary_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def is_ours(name: str) -> bool:
    return name in (JOB_FILE, ERRORS_FILE) or bool(
        PART_FILE.fullmatch(name) or PART_FOLDER.fullmatch(name) or TEMPORARY.fullmatch(name)
    )


def model_record(model_dir: str | Path, variant: str) -> dict[str, str]:
    manifest = (Path(model_dir) / MANIFEST_NAME).read_bytes()
    return {"manifest_sha256": hashlib.sha256(manifest).hexdigest(), "variant": variant}


def inputs_record(files: list[InputFile]) -> list[dict[str, Any]]:
    return [{"name": file.name, "size": file.size, "digest": file.digest} for file in files]


def check_paths(input_path: str | Path, output: Path) -> None:
    """OUTPUT inside INPUT (or the same folder) is refused: a rerun would read our parts as input."""
    source, target = Path(input_path).resolve(), output.resolve()
    if source.is_dir() and (target == source or source in target.parents):
        raise CorpusError(f"OUTPUT {output} is inside INPUT {input_path}; a rerun would read its parts as input")
    if target == source:
        raise CorpusError(f"OUTPUT {output} is INPUT itself")


@contextlib.contextmanager
def locked(output: Path) -> Iterator[None]:
    """Create OUTPUT and hold its lock: a second job on the same OUTPUT is refused, not interleaved."""
    if output.exists() and not output.is_dir():
        raise CorpusError(f"OUTPUT {output} is a file; a folder is needed")
    output.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one job per OUTPUT is then the caller's to keep
        yield
        return
    # The folder itself is locked, so no lock file is left behind in OUTPUT.
    descriptor = os.open(output, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CorpusError(f"another embed-corpus job is writing {output}; wait for it or stop it") from None
        except OSError as error:  # a filesystem without flock (some NFS mounts): go on unlocked, and say so
            logger.warning("cannot lock %s (%s); run one job per OUTPUT at a time", output, error)
        yield
    finally:
        os.close(descriptor)


def remove_ours(output: Path, *, temporary_only: bool) -> list[str]:
    """Remove our temporary files (a crashed run's), or with ``temporary_only`` False every file of ours.
    Returns the names removed."""
    removed = []
    for path in output.iterdir():
        name = path.name
        if not TEMPORARY.fullmatch(name) and (temporary_only or not is_ours(name)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(name)
    if removed:
        fsync_folder(output)
    return removed


def fsync_folder(folder: Path) -> None:
    """Make renames and removals in ``folder`` durable (a part counts as done only once its name is)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # some filesystems (and Windows) cannot fsync a folder; the rename is all there is
        pass
    finally:
        os.close(descriptor)


def write_atomically(path: Path, text: str) -> None:
    partial = temporary_path(path)
    with open(partial, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    partial.replace(path)
    fsync_folder(path.parent)


def _describe_inputs(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    before, after = {item["name"]: item for item in old}, {item["name"]: item for item in new}
    changes = [f"input {name} is new" for name in after if name not in before]
    changes += [f"input {name} is gone" for name in before if name not in after]
    for name in after.keys() & before.keys():
        if before[name]["size"] != after[name]["size"]:
            changes.append(f"input {name} changed size ({before[name]['size']} -> {after[name]['size']} bytes)")
        elif before[name]["digest"] != after[name]["digest"]:
            changes.append(f"input {name} changed content (same size)")
    if not changes and list(before) != list(after):
        changes.append("the inputs are in another order")
    return sorted(changes)


def describe_changes(recorded: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """What differs between the recorded job and this one, in words."""
    if recorded.get("format") != JOB_FORMAT:
        return [f"{JOB_FILE} is from an older onnxembed that did not record the model and input contents"]
    changes = []
    old_model, new_model = recorded.get("model", {}), job["model"]
    if old_model.get("manifest_sha256") != new_model["manifest_sha256"]:
        changes.append("the model changed (its onnxembed.json differs)")
    if old_model.get("variant") != new_model["variant"]:
        changes.append(f"the model variant: was {old_model.get('variant')!r}, now {new_model['variant']!r}")
    changes += _describe_inputs(recorded.get("inputs", []), job["inputs"])
    for key, value in job["settings"].items():
        if recorded.get("settings", {}).get(key) != value:
            changes.append(f"{key}: was {recorded.get('settings', {}).get(key)!r}, now {value!r}")
    return changes


def check_job(output: Path, job: dict[str, Any]) -> None:
    """Record ``job`` ({"settings", "model", "inputs"}) in a new OUTPUT; on a rerun, refuse any change."""
    path = output / JOB_FILE
    recorded = path.read_text(encoding="utf-8", errors="replace") if path.exists() else None
    has_parts = any(is_ours(item.name) and item.name.startswith("part-") for item in output.iterdir())
    text = job_record(recorded, job, str(output), has_parts)
    if text is not None:
        write_atomically(path, text)


def job_record(recorded: str | None, job: dict[str, Any], output: str, has_parts: bool) -> str | None:
    """The check of :func:`check_job` without the file I/O (an object store reads and writes it otherwise):
    the text of a new ``_job.json`` to write, None on a rerun of the same job, or the refusal raised."""
    job = {"format": JOB_FORMAT, **job}
    where = f"{output.rstrip('/')}/{JOB_FILE}"
    if recorded is not None:
        try:
            previous = json.loads(recorded)
        except ValueError as error:
            raise CorpusError(f"{where} is not readable ({error}); rerun with --restart to start over") from None
        try:
            changes = describe_changes(previous if isinstance(previous, dict) else {}, job)
        except (AttributeError, TypeError, KeyError) as error:  # JSON of another shape than this module writes
            raise CorpusError(f"{where} is not readable ({error}); rerun with --restart to start over") from None
        if changes:
            raise CorpusError(
                f"{output} holds a job that differs from this one: {'; '.join(changes)}. "
                "Rerun with --restart to start over (removes its parts), or use a new OUTPUT"
            )
        return None
    if has_parts:
        raise CorpusError(f"{output} holds parts but no {JOB_FILE}; rerun with --restart, or use a new OUTPUT")
    return json.dumps(job, indent=2, sort_keys=True) + "\n"
