"""The bench's work count (bench/throughput.py): what utilisation against the MatMul peaks is computed from.

The attention term follows the masks: every pair for bidirectional layers, a triangle for causal ones, at most
the window on windowed layers. Expected values are counted by hand from those rules.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from throughput import attention_flops, attention_layers  # noqa: E402


def test_bidirectional_counts_every_pair() -> None:
    # two layers, texts of 3 and 1 tokens: 9 + 1 pairs a layer, 4 x width flops a pair
    assert attention_flops([3, 1], width=8, windows=[None, None], causal=False) == 4 * 8 * 2 * (9 + 1)


def test_causal_counts_a_triangle_and_windows_cap_it() -> None:
    # 4 tokens causal: 1 + 2 + 3 + 4 = 10 pairs; a window of 2 keys: 1 + 2 + 2 + 2 = 7
    assert attention_flops([4], width=1, windows=[None], causal=True) == 4 * 10
    assert attention_flops([4], width=1, windows=[2], causal=True) == 4 * 7
    # bidirectional with a window of 2: 2 keys for each of 4 queries
    assert attention_flops([4], width=1, windows=[2], causal=False) == 4 * 8


def test_layers_come_from_the_config(tmp_path: Path) -> None:
    qwen = {"model_type": "qwen3", "num_attention_heads": 16, "head_dim": 128, "hidden_size": 1024}
    (tmp_path / "config.json").write_text(json.dumps({**qwen, "num_hidden_layers": 2}))
    assert attention_layers(tmp_path) == (2048, [None, None], True)

    modernbert = {"model_type": "modernbert", "num_attention_heads": 12, "hidden_size": 768, "num_hidden_layers": 4}
    (tmp_path / "config.json").write_text(
        json.dumps({**modernbert, "global_attn_every_n_layers": 3, "local_attention": 128})
    )
    assert attention_layers(tmp_path) == (768, [None, 64, 64, None], False)

    gemma = {"model_type": "gemma3_text", "num_attention_heads": 3, "head_dim": 256, "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(
        json.dumps({**gemma, "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 512})
    )
    assert attention_layers(tmp_path) == (768, [512, None], False)
