"""Writing an ONNX graph the way every export step does: one file, or one file plus one _data file beside it.

Imports onnx only (no torch), so the graph-rewriting steps can use it too.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and constant attributes, subgraphs (a Scan's body) included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _locations(model: onnx.ModelProto) -> set[str]:
    return {
        entry.value for tensor in _tensors(model.graph) for entry in tensor.external_data if entry.key == "location"
    }


def external_files(path: Path) -> list[Path]:
    """The external data files the graph at ``path`` reads (onnxruntime's quantizer names them
    ``NAME.data``, onnxembed ``NAME_data``), existing or not."""
    model = onnx.load(str(path), load_external_data=False)
    return sorted(path.with_name(location) for location in _locations(model))


def remove(path: Path) -> None:
    """Delete a graph and its external data."""
    if path.is_file():
        for data in external_files(path):
            data.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def move(src: Path, dst: Path) -> None:
    """Move a graph to ``dst``, its external data (if any) renamed ``dst.name + '_data'`` and the graph's
    references to it rewritten, so no file keeps the old graph's name."""
    model = onnx.load(str(src), load_external_data=False)
    locations = _locations(model)
    if not locations:
        src.replace(dst)
        return
    if len(locations) > 1:  # weights spread over several files: gather them into one
        save(onnx.load(str(src)), dst, external_data=True)
        remove(src)
        return
    (old,) = locations
    for tensor in _tensors(model.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = dst.name + "_data"
    src.with_name(old).replace(dst.with_name(dst.name + "_data"))
    onnx.save_model(model, str(dst))
    src.unlink()
