"""OUTPUT on a pyarrow filesystem without atomic rename or fsync (s3://, gs://, ...): how Ray's job keeps it.

In scope: resolving OUTPUT (a local path, a URI ``pyarrow.fs.FileSystem.from_uri`` reads, or a path in a
given filesystem), and for a non-local one the job record, the cleanup of a crashed run, the commit of a
file's part folder by a manifest written last, and the report over committed folders only. A local OUTPUT
(a path or ``file://``) keeps the folder rename of ray.py and job.py. Not in scope: what is written (ray.py).

A part folder ``part-FFFFF/`` counts as done once its ``_manifest.json`` exists (an object PUT is all or
nothing); one without it is a crashed run's and is removed on the next start.
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxembed.corpus.inputs import CorpusError
from onnxembed.corpus.job import ERRORS_FILE, JOB_FILE, PART_FOLDER, TEMPORARY, is_ours, job_record
from onnxembed.corpus.parts import part_order, report_parts

logger = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Output:
    """Where the parts go: ``local`` is the folder when OUTPUT is on local disk (or a shared mount) and the
    rename commit applies; else ``filesystem`` and ``root`` (a path in it) take the manifest commit."""

    filesystem: Any
    root: str
    local: Path | None
    shown: str  # as the user gave it, for messages

    def path(self, *names: str) -> str:
        return posixpath.join(self.root, *names)

    def __str__(self) -> str:
        return self.shown


def resolve_output(output: str | Path, filesystem: Any = None) -> Output:
    """``output`` as a local folder, or in ``filesystem`` (a pyarrow filesystem), or as a URI ("s3://b/x")."""
    from pyarrow import fs

    shown = str(output)
    if filesystem is None and isinstance(output, str) and "://" in output:
        try:
            filesystem, output = fs.FileSystem.from_uri(output)
        except (ValueError, OSError) as error:
            raise CorpusError(f"OUTPUT {output}: not a path or a URI pyarrow can open ({error})") from None
    if filesystem is None or isinstance(filesystem, fs.LocalFileSystem):
        local = Path(output)
        return Output(fs.LocalFileSystem(), str(local.resolve()), local, shown)
    return Output(filesystem, str(output).rstrip("/"), None, shown)


def _read_text(out: Output, name: str) -> str | None:
    from pyarrow import fs

    path = out.path(name)
    if out.filesystem.get_file_info(path).type != fs.FileType.File:
        return None
    with out.filesystem.open_input_stream(path) as stream:
        return bytes(stream.read()).decode("utf-8", errors="replace")


def write_text(out: Output, path: str, text: str) -> None:
    """One object written whole (a PUT), never seen half-written."""
    with out.filesystem.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))


def is_committed(out: Output, folder: str) -> bool:
    from pyarrow import fs

    return bool(out.filesystem.get_file_info(posixpath.join(folder, MANIFEST)).type == fs.FileType.File)


def start_job(out: Output, job: dict[str, Any], restart: bool) -> None:
    """Remove our objects if ``restart``, else a crashed run's (temporaries, part folders without a manifest),
    then record or check the job. No lock: object stores have none, so one job per OUTPUT is the caller's."""
    from pyarrow import fs

    logger.warning("%s cannot be locked (object store): run one embed-corpus job per OUTPUT at a time", out)
    out.filesystem.create_dir(out.root, recursive=True)
    removed = []
    for info in out.filesystem.get_file_info(fs.FileSelector(out.root, allow_not_found=True)):
        name = posixpath.basename(info.path)
        uncommitted = PART_FOLDER.fullmatch(name) and not is_committed(out, info.path)
        if is_ours(name) and (restart or uncommitted or TEMPORARY.fullmatch(name)):
            if info.type == fs.FileType.Directory:
                out.filesystem.delete_dir(info.path)
            else:
                out.filesystem.delete_file(info.path)
            removed.append(name)
    if removed:
        logger.info("removed from %s: %s", out, ", ".join(sorted(removed)))
    names = [posixpath.basename(info.path) for info in out.filesystem.get_file_info(fs.FileSelector(out.root))]
    has_parts = any(is_ours(name) and name.startswith("part-") for name in names)
    text = job_record(_read_text(out, JOB_FILE), job, str(out), has_parts)
    if text is not None:
        write_text(out, out.path(JOB_FILE), text)


def commit(out: Output, folder: str, file_name: str, parts: list[dict[str, Any]]) -> None:
    """The step after which a file counts as done: its manifest, written after every part it lists."""
    manifest = {"format": MANIFEST_FORMAT, "input": file_name, "parts": parts}
    write_text(out, posixpath.join(folder, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def committed_parts(out: Output, folder: str) -> list[str]:
    """The part paths a committed folder's manifest lists (and only those: a stray object is never read)."""
    with out.filesystem.open_input_stream(posixpath.join(folder, MANIFEST)) as stream:
        try:
            manifest = json.loads(bytes(stream.read()))
            return [posixpath.join(folder, part["name"]) for part in manifest["parts"]]
        except (ValueError, KeyError, TypeError) as error:
            raise CorpusError(f"{folder}/{MANIFEST} is not readable ({error}); rerun with --restart") from None


def collect_report(out: Output, file_names: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """As parts.collect_report, over the committed folders' listed parts; _errors.jsonl is written whole."""
    from pyarrow import fs

    parts = []
    listed = out.filesystem.get_file_info(fs.FileSelector(out.root))
    for info in sorted(listed, key=lambda info: part_order(posixpath.basename(info.path))):
        name = posixpath.basename(info.path)
        if PART_FOLDER.fullmatch(name) and info.type == fs.FileType.Directory and is_committed(out, info.path):
            file_name = file_names[int(name.split("-")[1])]  # "part-FFFFF", more digits past 99,999 files
            parts += [(path, file_name) for path in committed_parts(out, info.path)]
    bad, duplicates, text = report_parts(parts, out.filesystem)
    errors = out.path(ERRORS_FILE)
    write_text(out, errors, text)
    return bad, duplicates, errors
