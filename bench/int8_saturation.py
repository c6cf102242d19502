"""What int8 saturation does to an export's vectors on this CPU: each int8 graph against its exact twin.

    python bench/int8_saturation.py EXPORTED_DIR [GRAPH.onnx ...] [--sentences 400] [--paragraphs 60]

onnxruntime's uint8 x int8 kernel without VNNI adds pairs of products in 16 bits and saturates on full-range
weights (onnxembed/runtime/int8.py). The exact products come from a twin of each graph whose int8 weights w are
stored as the uint8 w + 128 with zero point 128: the same integers, through the uint8 x uint8 kernel, which
widens to 16 bits before multiplying and cannot saturate. Graphs: the ones named (files in EXPORTED_DIR/onnx),
else two made here from the export's fp32 graph with every weighted MatMul quantized per channel: full-range
(what the exporter writes where the kernel is exact) and 7-bit (reduce_range, where it is not). A 7-bit graph
and its twin give the same vectors, which checks the twin. For each: mean / p1 / min cosine to fp32 and to the
twin, max abs difference to the twin, on bench/corpus.py's texts. Prints the CPU and whether its kernel
saturates. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from corpus import paragraphs, sentences  # noqa: E402
from int8_formats import quantize  # noqa: E402

from onnxembed import Encoder  # noqa: E402
from onnxembed.runtime.cpu import cpu_info  # noqa: E402
from onnxembed.runtime.int8 import u8s8_saturates  # noqa: E402


def exact_twin(src: Path, dst: Path) -> int:
    """Write src with each int8 weight of a MatMulInteger as uint8 (w + 128, zero point + 128). Returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or constants.get(node.input[1]) is None:
            continue
        weights = numpy_helper.to_array(constants[node.input[1]])
        if weights.dtype != np.int8:
            continue
        as_uint8 = (weights.astype(np.int16) + 128).astype(np.uint8)
        constants[node.input[1]].CopyFrom(numpy_helper.from_array(as_uint8, node.input[1]))
        zero_name = f"{node.input[1]}_twin_zero_point"
        zero = np.zeros(weights.shape[-1], np.int16)
        if len(node.input) > 3 and node.input[3]:
            zero_name = node.input[3]
            zero = numpy_helper.to_array(constants[zero_name]).astype(np.int16)
            model.graph.initializer.remove(constants[zero_name])
        else:
            while len(node.input) < 3:
                node.input.append("")
            node.input.append(zero_name)
        model.graph.initializer.append(numpy_helper.from_array((zero + 128).astype(np.uint8), zero_name))
        rewritten += 1
    onnx.save(model, str(dst))
    return rewritten


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exported_dir", type=Path)
    parser.add_argument("graphs", nargs="*", help="int8 graphs in EXPORTED_DIR/onnx (default: two made here)")
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--paragraphs", type=int, default=60)
    args = parser.parse_args()
    onnx_dir = args.exported_dir / "onnx"
    made = []
    graphs = list(args.graphs)
    if not graphs:
        for name, reduce_range in (("bench_all_matmul_full_range.onnx", False), ("bench_all_matmul_7bit.onnx", True)):
            quantize(onnx_dir / "model.onnx", onnx_dir / name, True, reduce_range, "QInt8")
            made.append(onnx_dir / name)
            graphs.append(name)
    texts = sentences(args.sentences) + paragraphs(args.paragraphs)
    print(f"cpu: {cpu_info().describe()}; onnxruntime's uint8 x int8 kernel saturates: {u8s8_saturates()}")
    print(f"{args.exported_dir}; {args.sentences} sentences, {args.paragraphs} paragraphs, batch 32\n")

    def encode(graph: str) -> np.ndarray:
        return Encoder(args.exported_dir, provider="cpu", variant=graph).encode(texts, batch_size=32)

    reference = encode("fp32")
    print("cosines: mean / p1 / min\n")
    print("| graph | to fp32 | its exact twin to fp32 | to its twin | max abs to its twin |")
    print("|---|---|---|---|---:|")
    try:
        for graph in graphs:
            twin = onnx_dir / f"twin_{Path(graph).name}"
            made.append(twin)
            exact_twin(onnx_dir / graph, twin)
            vectors, exact = encode(graph), encode(twin.name)

            def spread(values: np.ndarray) -> str:
                return f"{values.mean():.4f} / {np.percentile(values, 1):.4f} / {values.min():.4f}"

            print(
                f"| {graph} | {spread(cosines(vectors, reference))} | {spread(cosines(exact, reference))} "
                f"| {spread(cosines(vectors, exact))} | {np.abs(vectors - exact).max():.3g} |"
            )
    finally:
        for path in made:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
