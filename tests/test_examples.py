"""Every script in examples/ runs against a tiny export and prints what its docstring promises.

The tiny model has random weights, so only the shape of the output is checked, not which text wins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# script -> a line its output must contain
EXPECTED = {
    "similarity.py": "float32",
    "semantic_search.py": "query: A man is eating pasta.",
    "retrieval.py": "similarity: cosine",
    "server_client.py": "server exited with 0",
}


def test_every_example_is_tested() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str, tiny_export: Path) -> None:
    if script == "server_client.py":
        pytest.importorskip("starlette")
        pytest.importorskip("uvicorn")
        pytest.importorskip("orjson")
    # this checkout's package, whatever the environment has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("ONNXEMBED_API_KEY", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), str(tiny_export)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert EXPECTED[script] in result.stdout, result.stdout
