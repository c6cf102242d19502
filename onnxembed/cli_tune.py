"""``onnxembed tune MODEL_DIR``: measure the CPU engine settings for one export on this host, once, and write the
profile that Encoder and ``onnxembed serve`` read at load. Kept apart from cli.py, which parses the command
line and runs the command named."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(commands: Any) -> None:
    tune = commands.add_parser(
        "tune", help="measure the CPU engine settings for an export on this host and write a profile it loads with"
    )
    tune.add_argument("model_dir", help="directory written by `onnxembed export` (an embedding model)")
    tune.add_argument(
        "--variant",
        action="append",
        dest="variants",
        metavar="NAME",
        help="a variant to tune, repeatable (default: every CPU variant of the export: fp32, optimized, int8)",
    )
    tune.add_argument("--rounds", type=int, default=3, help="alternated rounds per stage (default 3)")
    tune.add_argument(
        "--throughput-only",
        action="store_true",
        help="choose on texts/s alone, even where a single text gets more than 10%% slower",
    )


def run(args: argparse.Namespace) -> None:
    """One line per trial on stderr, then the profile's path and each variant's settings."""
    from onnxembed.tune import tune

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    path, profile = tune(
        args.model_dir, variants=args.variants, rounds=args.rounds, throughput_only=args.throughput_only, report=report
    )
    print(f"wrote {path} ({profile['method']['seconds']:.0f} s)", file=sys.stderr)
    for name, result in profile["variants"].items():
        settings = " ".join(f"{key}={value}" for key, value in result["settings"].items())
        print(f"{name}\t{settings}")
