"""int8 quantization options on this CPU: speed against fp32 and cosine to fp32, in alternated rounds.

    python bench/int8_formats.py EXPORTED_DIR [--rounds 3] [--sentences 400] [--paragraphs 60] [--json-out F]

EXPORTED_DIR: an export with fp32 (and, if it has one, its int8 variant, measured as "export-int8"). From its
fp32 graph this quantizes every weighted MatMul with onnxruntime's quantize_dynamic (operator format: the
activations are quantized per run to uint8 by DynamicQuantizeLinear, so dynamic int8 is always u8 x weights):

- per-tensor / per-channel weight scales;
- reduce_range (7-bit weights, what the exporter uses without VNNI, where AVX2's u8 x s8 multiply-add
  saturates) on and off;
- int8 (u8s8) or uint8 (u8u8) weights;
- with ``--static``: static quantization in the QDQ format with int8 activations and weights (s8s8, per-channel
  weights; activation ranges by MinMax and by the 99.999th percentile over calibration batches of text the
  measurement does not read), and the dynamic all-MatMul quantization of onnxruntime's attention-fused graph
  with its Attention nodes quantized too (QAttention).

Each graph runs in an Encoder (provider cpu, default engine) on the stdlib-docstring sentences and paragraphs
(bench/corpus.py); all graphs take turns, rounds outermost, and a rate is the median round. The ratio to fp32
is the median of the per-round ratios. Cosines are to the fp32 graph's vectors of the same texts. Prints the
CPU (bench/peaks.py's line) and the load average. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from corpus import paragraphs, sentences  # noqa: E402

from onnxembed import Encoder  # noqa: E402
from onnxembed.manifest import Manifest  # noqa: E402
from onnxembed.runtime.cpu import cpu_info  # noqa: E402

# name -> (per_channel, reduce_range, weight type)
OPTIONS = {
    "per-tensor u8s8 reduce-range": (False, True, "QInt8"),
    "per-channel u8s8 reduce-range": (True, True, "QInt8"),
    "per-channel u8s8 full-range": (True, False, "QInt8"),
    "per-channel u8u8": (True, False, "QUInt8"),
}


def quantize(fp32: Path, out: Path, per_channel: bool, reduce_range: bool, weight_type: str) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(out),
        op_types_to_quantize=["MatMul"],
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=getattr(QuantType, weight_type),
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def calibration_feeds(exported: Path) -> list[dict[str, np.ndarray]]:
    """Encoder batches of sentences and paragraphs that the measurement (the first 400 / 60) does not read, cut
    as the exporter cuts its calibration batches."""
    from onnxembed.exporter.variants import _calibration_feeds

    encoder = Encoder(exported, provider="cpu", variant="fp32", profile=False)
    texts = sentences(2000)[1000:1256] + paragraphs(500)[200:232]
    return _calibration_feeds(encoder, texts)  # type: ignore[return-value]  # arrays, typed as object there


def same_shape(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The batches of full size, each right-padded to the longest (pad id 0, mask 0)."""
    rows = max(len(feed["input_ids"]) for feed in feeds)
    width = max(feed["input_ids"].shape[1] for feed in feeds)
    return [
        {name: np.pad(array, ((0, 0), (0, width - array.shape[1]))) for name, array in feed.items()}
        for feed in feeds
        if len(feed["input_ids"]) == rows
    ]


def quantize_static_qdq(fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]], method: str) -> None:
    """s8s8 QDQ: int8 activations with ranges fixed by calibration, per-channel int8 weights."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    extra: dict[str, bool | float] = {"ActivationSymmetric": True, "MatMulConstBOnly": True}
    if method == "Percentile":
        extra["CalibPercentile"] = 99.999
        feeds = same_shape(feeds)  # the histogram calibrators stack every batch's tensors
    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options=extra,
    )


def quantize_attention_fused(exported: Path, fp32: Path, out: Path) -> None:
    """onnxruntime's attention-fused graph (right padding), its MatMuls and Attention nodes quantized dynamically
    (Attention becomes QAttention), per-channel full-range int8 weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnxembed.exporter.quantize import optimize

    config = json.loads((exported / "config.json").read_text())
    fused = out.with_name(out.stem + "_fused.onnx")
    optimize(fp32, fused, "cpu", config["num_attention_heads"], config["hidden_size"], right_padded=True)
    quantize_dynamic(
        str(fused),
        str(out),
        op_types_to_quantize=["MatMul", "Attention"],
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    fused.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exported", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--paragraphs", type=int, default=60)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--static", action="store_true", help="also static QDQ s8s8 and QAttention graphs")
    args = parser.parse_args()
    manifest = Manifest.read(args.exported)
    graphs = {"fp32": manifest.variants["fp32"].file}
    if "int8" in manifest.variants:
        graphs["export-int8"] = manifest.variants["int8"].file
    for name, (per_channel, reduce_range, weight_type) in OPTIONS.items():
        relative = f"onnx/bench_{name.replace(' ', '_').replace('-', '_')}.onnx"
        if not (args.exported / relative).is_file():
            quantize(args.exported / graphs["fp32"], args.exported / relative, per_channel, reduce_range, weight_type)
        graphs[name] = relative
    if args.static:
        fp32 = args.exported / graphs["fp32"]
        feeds: list[dict[str, np.ndarray]] = []
        for method in ("MinMax", "Percentile"):
            relative = f"onnx/bench_static_qdq_s8s8_{method.lower()}.onnx"
            if not (args.exported / relative).is_file():
                feeds = feeds or calibration_feeds(args.exported)
                quantize_static_qdq(fp32, args.exported / relative, feeds, method)
            graphs[f"static QDQ s8s8 per-channel, {method}"] = relative
        relative = "onnx/bench_qattention.onnx"
        if not (args.exported / relative).is_file():
            quantize_attention_fused(args.exported, fp32, args.exported / relative)
        graphs["fused attention, QAttention + per-channel u8s8"] = relative
    texts = {"sentences": sentences(args.sentences), "paragraphs": paragraphs(args.paragraphs)}
    load_start = os.getloadavg()
    encoders = {
        name: Encoder(args.exported, provider="cpu", variant=file, profile=False) for name, file in graphs.items()
    }
    vectors = {
        name: {corpus: encoder.encode(batch) for corpus, batch in texts.items()} for name, encoder in encoders.items()
    }
    seconds: dict[str, dict[str, list[float]]] = {name: {corpus: [] for corpus in texts} for name in graphs}
    for round_index in range(args.rounds):
        for name, encoder in encoders.items():
            for corpus, batch in texts.items():
                start = time.perf_counter()
                encoder.encode(batch)
                seconds[name][corpus].append(time.perf_counter() - start)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    cpu = cpu_info()
    print(f"cpu: {cpu.describe()}; load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"{args.exported}; {args.rounds} rounds; {args.sentences} sentences, {args.paragraphs} paragraphs\n")
    print("| graph | sentences/s | x fp32 | paragraphs/s | x fp32 | mean cos | p1 cos |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results = {}
    for name in graphs:
        row: dict[str, float] = {}
        for corpus, batch in texts.items():
            row[f"{corpus}_per_s"] = len(batch) / statistics.median(seconds[name][corpus])
            ratios = [base / own for base, own in zip(seconds["fp32"][corpus], seconds[name][corpus], strict=True)]
            row[f"{corpus}_x_fp32"] = statistics.median(ratios)
        both_own = np.concatenate([vectors[name][corpus] for corpus in texts])
        both_fp32 = np.concatenate([vectors["fp32"][corpus] for corpus in texts])
        cosines = (both_own * both_fp32).sum(1) / (np.linalg.norm(both_own, axis=1) * np.linalg.norm(both_fp32, axis=1))
        row.update(mean_cosine=float(cosines.mean()), p1_cosine=float(np.percentile(cosines, 1)))
        results[name] = row
        print(
            f"| {name} | {row['sentences_per_s']:.1f} | {row['sentences_x_fp32']:.2f}x | "
            f"{row['paragraphs_per_s']:.1f} | {row['paragraphs_x_fp32']:.2f}x | {row['mean_cosine']:.4f} | "
            f"{row['p1_cosine']:.4f} |"
        )
    if args.json_out:
        record = {"cpu": cpu.to_dict(), "load_average": [load_start[0], os.getloadavg()[0]], "graphs": results}
        args.json_out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
