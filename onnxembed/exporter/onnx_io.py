"""Writing an ONNX graph the way every export step does: one file, or one file plus one _data file beside it.

Imports onnx only (no torch), so the graph-rewriting steps can use it too.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def save(model: onnx.ModelProto, path: Path, external_data: bool) -> None:
    """Write ``model`` to ``path``; with ``external_data`` its weights go to ``path.name + '_data'``.
    Stale files of an earlier export at ``path`` are removed first."""
    for stale in (path, path.with_name(path.name + "_data")):
        stale.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external_data,
        all_tensors_to_one_file=True,
        location=path.name + "_data",
        size_threshold=1024,
    )
