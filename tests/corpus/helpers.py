"""Inputs for the corpus tests and the check they share: every id once, each row equal to Encoder.encode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.replicas import CORPUS, MIXED_TEXTS

# Unique texts, several chunks' worth: empty, spaces, scripts, far over max_seq_length.
TEXTS = [text for text in MIXED_TEXTS if "\n" not in text and "\r" not in text] + [
    f"{index}: {line}" for index, line in enumerate(CORPUS[:20])
]
IDS = [f"doc-{index:03d}" for index in range(len(TEXTS))]


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_text(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
    return path


def read_output(output: Path) -> dict[Any, dict[str, Any]]:
    """OUTPUT's rows by id (asserting each id appears once): {"embedding": array or None, "error": ...}."""
    import pyarrow.parquet as pq

    table = pq.read_table(output)
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)), "duplicated ids in the output"
    embeddings = table["embedding"].to_pylist()
    errors = table["error"].to_pylist()
    return {
        row_id: {"embedding": None if vector is None else np.asarray(vector), "error": error}
        for row_id, vector, error in zip(ids, embeddings, errors, strict=True)
    }


def assert_rows_equal(rows: dict[Any, dict[str, Any]], expected: dict[Any, np.ndarray]) -> None:
    """Exactly the expected ids, each with no error and the expected embedding (atol 1e-5)."""
    assert sorted(rows, key=str) == sorted(expected, key=str)
    for row_id, vector in expected.items():
        assert rows[row_id]["error"] is None
        assert rows[row_id]["embedding"] is not None, row_id
        np.testing.assert_allclose(rows[row_id]["embedding"], vector, atol=1e-5, err_msg=str(row_id))
