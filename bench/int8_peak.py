"""onnxruntime's int8 MatMul peak against its fp32 one on this CPU: what int8 graphs can gain here at most.

    python bench/int8_peak.py [--size 2048] [--rounds 5] [--json-out F]

One MatMul graph, (size, size) float32 activations times a constant (size, size) weight, run as float32 and
as quantize_dynamic writes it (DynamicQuantizeLinear + MatMulInteger, fused by onnxruntime into
DynamicQuantizeMatMul): int8 weights per tensor and per channel, with and without reduce_range (7-bit weights,
what onnxembed's export uses on CPUs without VNNI). All graphs run in turn, --rounds times, each the best of 4
calls after a warm-up, on onnxruntime's default threads; ratios are per round, their median reported. The CPU
and load average are printed beside the figures. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _cpu_name  # noqa: E402


def graphs(size: int, folder: Path) -> dict[str, Path]:
    """The fp32 graph and its int8 versions, written into ``folder``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(weight, "w")],
    )
    files = {"fp32": folder / "fp32.onnx"}
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), files["fp32"])
    for per_channel in (False, True):
        for reduce_range in (True, False):
            name = f"int8 {'per-channel' if per_channel else 'per-tensor'}{', reduce_range' * reduce_range}"
            files[name] = folder / f"int8_{per_channel}_{reduce_range}.onnx"
            quantize_dynamic(
                files["fp32"],
                files[name],
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=reduce_range,
                op_types_to_quantize=["MatMul"],
                extra_options={"MatMulConstBOnly": True},
            )
    return files


def main() -> None:
    import logging

    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process
    loadavg_start = os.getloadavg()
    a = np.random.default_rng(1).standard_normal((args.size, args.size), dtype=np.float32)
    flop = 2 * args.size**3
    with tempfile.TemporaryDirectory() as folder:
        sessions = {
            name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for name, path in graphs(args.size, Path(folder)).items()
        }
    seconds: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for round_index in range(args.rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            session = sessions[name]
            session.run(None, {"a": a})
            calls = []
            for _ in range(4):
                started = time.perf_counter()
                session.run(None, {"a": a})
                calls.append(time.perf_counter() - started)
            seconds[name].append(min(calls))
    results = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "size": args.size,
        "rounds": args.rounds,
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
        "graphs": {},
    }
    for name in names:
        ratios = [fp32 / own for fp32, own in zip(seconds["fp32"], seconds[name], strict=True)]
        results["graphs"][name] = {
            "gflops": flop / min(seconds[name]) / 1e9,
            "gflops_rounds": [flop / s / 1e9 for s in seconds[name]],
            "vs_fp32": statistics.median(ratios),
            "vs_fp32_rounds": ratios,
        }
    print(
        f"{results['cpu']}, {results['cores']} cores, onnxruntime {ort.__version__}; load average "
        f"{loadavg_start[0]:.2f} at start, {results['loadavg_end'][0]:.2f} at end; {args.size}x{args.size} MatMul, "
        f"{args.rounds} rounds in turn"
    )
    print("\n| graph | best GFLOP/s | x fp32 (median of rounds) | x fp32 per round |\n|---|---:|---:|---|")
    for name, row in results["graphs"].items():
        rounds = ", ".join(f"{ratio:.2f}" for ratio in row["vs_fp32_rounds"])
        print(f"| {name} | {row['gflops']:.1f} | {row['vs_fp32']:.2f}x | {rounds} |")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
