"""Prometheus text exposition, written by hand: counters and histograms under one lock.

In scope: requests by endpoint and status, client disconnects (apart: no answer was sent, and they are not
errors), queue depth, worker batch size and tokens, inference and end-to-end latency.
Not in scope: collecting them (app.py, batcher.py).
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help_text, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {cumulative}')
        cumulative += self.counts[-1]
        lines += [f'{self.name}_bucket{{le="+Inf"}} {cumulative}', f"{self.name}_sum {self.total:.6f}"]
        lines.append(f"{self.name}_count {cumulative}")
        return lines


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self._disconnects: Counter[str] = Counter()
        self._texts = 0
        self._request_seconds = Histogram(
            "onnxembed_request_duration_seconds", "End-to-end request latency.", LATENCY_BUCKETS
        )
        self._inference_seconds = Histogram(
            "onnxembed_inference_duration_seconds", "Time of one model batch (run, pool, normalize).", LATENCY_BUCKETS
        )
        self._batch_size = Histogram("onnxembed_batch_size", "Texts in one model batch.", SIZE_BUCKETS)
        self._batch_tokens = Histogram(
            "onnxembed_batch_tokens", "Tokens (unpadded, after truncation) in one model batch.", TOKEN_BUCKETS
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(endpoint, status)] += 1
            self._request_seconds.observe(seconds)

    def observe_disconnect(self, endpoint: str) -> None:
        with self._lock:
            self._disconnects[endpoint] += 1

    def observe_batch(self, texts: int, tokens: int, seconds: float) -> None:
        with self._lock:
            self._texts += texts
            self._batch_size.observe(texts)
            self._batch_tokens.observe(tokens)
            self._inference_seconds.observe(seconds)

    def render(self, queue_depth: int) -> str:
        with self._lock:
            lines = ["# HELP onnxembed_requests_total HTTP requests by endpoint and status."]
            lines.append("# TYPE onnxembed_requests_total counter")
            for (endpoint, status), count in sorted(self._requests.items()):
                lines.append(f'onnxembed_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
            lines.append("# HELP onnxembed_client_disconnects_total Requests whose client hung up before the answer.")
            lines.append("# TYPE onnxembed_client_disconnects_total counter")
            for endpoint, count in sorted(self._disconnects.items()):
                lines.append(f'onnxembed_client_disconnects_total{{endpoint="{endpoint}"}} {count}')
            lines += ["# HELP onnxembed_texts_total Texts embedded.", "# TYPE onnxembed_texts_total counter"]
            lines.append(f"onnxembed_texts_total {self._texts}")
            lines.append("# HELP onnxembed_queue_depth Texts waiting for the worker.")
            lines.append("# TYPE onnxembed_queue_depth gauge")
            lines.append(f"onnxembed_queue_depth {queue_depth}")
            for histogram in (self._request_seconds, self._inference_seconds, self._batch_size, self._batch_tokens):
                lines += histogram.render()
        return "\n".join(lines) + "\n"
