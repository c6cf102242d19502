"""This host's matmul ceilings: the fp32 and the int8 (dynamic-quantized) MatMul peaks of onnxruntime, in one run.

    python bench/peaks.py [--size 2048] [--rounds 5] [--json-out F]

Prints the CPU (vendor, model, family/model numbers, the flags that pick MLAS's kernels: avx2, avx512f,
avx512_vnni, avx_vnni, amx_int8) and the best GFLOP/s (GOP/s for int8) of a size x size MatMul on all threads:
numpy (its BLAS) fp32, onnxruntime fp32, and onnxruntime int8 on a one-MatMul graph quantized by
``onnxruntime.quantization.quantize_dynamic`` (weights int8 per tensor, activations quantized per run: what
the int8 variants run). The systems alternate, rounds outermost, so a burst of load elsewhere does not hit one
only. throughput.py calls :func:`matmul_peaks` before and after its systems. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from onnxembed.runtime.cpu import cpu_info  # noqa: E402


def _matmul_model(size: int, weight: np.ndarray | None) -> bytes:
    """``c = a @ b``: b an input, or a weight initializer (the form quantize_dynamic quantizes)."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])]
    initializers = []
    if weight is None:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size]))
    else:
        initializers.append(numpy_helper.from_array(weight, "b"))
    output = helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", inputs, [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def _int8_model(size: int, weight: np.ndarray) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="onnxembed-peak-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(_matmul_model(size, weight))
        logging.disable(logging.WARNING)  # the quantizer's advice to pre-process, on the root logger
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        return target.read_bytes()


def matmul_peaks(size: int = 2048, rounds: int = 5, calls: int = 5) -> dict[str, float]:
    """Best GFLOP/s (GOP/s for int8: 2 x size^3 multiply-adds counted alike) of numpy fp32, onnxruntime fp32
    and onnxruntime int8 dynamic-quantized MatMul, all threads, ``rounds`` x ``calls`` timed calls each."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    providers = ["CPUExecutionProvider"]
    fp32 = ort.InferenceSession(_matmul_model(size, None), providers=providers)
    int8 = ort.InferenceSession(_int8_model(size, b), providers=providers)
    runs: dict[str, Callable[[], object]] = {
        "numpy": lambda: a @ b,
        "onnxruntime": lambda: fp32.run(None, {"a": a, "b": b}),
        "onnxruntime_int8": lambda: int8.run(None, {"a": a}),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):  # alternate, so a burst of load elsewhere does not hit one side only
        for name, matmul in runs.items():
            matmul()
            for _ in range(calls):
                start = time.perf_counter()
                matmul()
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: 2 * size**3 / seconds / 1e9 for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    import os

    import onnxruntime as ort

    cpu = cpu_info()
    load = os.getloadavg()
    peaks = matmul_peaks(args.size, args.rounds)
    ratio = peaks["onnxruntime_int8"] / peaks["onnxruntime"]
    print(f"cpu: {cpu.describe()}")
    print(f"onnxruntime {ort.__version__}; load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"| {args.size}x{args.size} MatMul, all threads | GFLOP/s (int8: GOP/s) |\n|---|---:|")
    for name, value in peaks.items():
        print(f"| {name} | {value:.1f} |")
    print(f"\nint8 / fp32 onnxruntime peak: {ratio:.2f}x")
    if args.json_out:
        record = {"cpu": cpu.to_dict(), "onnxruntime": ort.__version__, "peaks": peaks, "int8_over_fp32": ratio}
        args.json_out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
