"""onnxruntime's fp32 MatMul rate at a model's projection shapes, by the number of rows (tokens in a batch).

    python bench/matmul_shapes.py [--shapes 1024x3072,1024x2048,1024x1024] [--rows 64,128,...] [--layers 4]

Each shape runs as a chain of --layers (k -> n -> k) MatMul pairs with constant weights (prepacked, as in an
exported model; 4 pairs of 1024x3072 floats are 96 MB, past a 32 MiB L3), all threads, 7 timed calls after
a warm-up: the median and best GFLOP/s. Tells whether a larger token budget would feed the GEMMs better.
Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _cpu_name  # noqa: E402


def chain(k: int, n: int, layers: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    for layer in range(layers):
        for suffix, shape in (("a", (k, n)), ("b", (n, k))):
            name = f"w{layer}{suffix}"
            weights.append(numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32) * 0.02, name))
            nodes.append(helper.make_node("MatMul", [previous, name], [f"h{layer}{suffix}"]))
            previous = f"h{layer}{suffix}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["rows", k])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--shapes", default="1024x3072,1024x2048,1024x1024", help="k x n of each weight")
    parser.add_argument("--rows", default="64,128,256,384,512,768,1024,1536,2048,4096")
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    print(_cpu_name())
    print("| weight k x n | rows | median GFLOP/s | best GFLOP/s |\n|---|---:|---:|---:|")
    for shape in args.shapes.split(","):
        k, n = (int(part) for part in shape.split("x"))
        session = chain(k, n, args.layers)
        for rows in (int(part) for part in args.rows.split(",")):
            x = np.random.default_rng(1).standard_normal((rows, k), dtype=np.float32)
            session.run(None, {"x": x})
            times = []
            for _ in range(7):
                start = time.perf_counter()
                session.run(None, {"x": x})
                times.append(time.perf_counter() - start)
            giga = 2 * rows * k * n * 2 * args.layers / 1e9
            print(f"| {k} x {n} | {rows} | {giga / statistics.median(times):.1f} | {giga / min(times):.1f} |")


if __name__ == "__main__":
    main()
