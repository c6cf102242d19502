"""The Encoder's engine: the loaded graph (or static table), its sessions, and batches run through them.

In scope: choosing the variant and the CPU settings a tuning profile gives, opening the sessions and the
overlapped runner, the batch defaults, running one batch (plain or with io_binding) and the modules after the
graph (pooling, Dense, Normalize, via kernels/), filling an output array in input order.
Not in scope: the public API and its argument checks, prompts, precision (encoder.py); building a session
(session.py); tokenizing (tokenize.py); where batches end (batching.py); threads (pipeline.py).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime import OrtValue

from onnxembed._checks import thread_count
from onnxembed.errors import InvalidArgumentError
from onnxembed.kernels import exclude_prompt, normalize, pool
from onnxembed.kernels.dense import dense
from onnxembed.manifest import MODEL_INPUTS, POOLED_OUTPUT, Manifest, ModelLoadError
from onnxembed.runtime.batching import Batch, Batcher, default_max_batch_tokens, sentence_transformers_batches
from onnxembed.runtime.pipeline import OverlappedRunner, progress_bar, run_serial
from onnxembed.runtime.profile import EngineSettings, default_settings, find_profile, tuned_settings
from onnxembed.runtime.session import create_session, resolve_provider
from onnxembed.runtime.tokenize import TextTokenizer
from onnxembed.runtime.variants import choose_variant
from onnxembed.runtime.weights import read_dense_layer, read_safetensors

logger = logging.getLogger(__name__)

# With overlap: threads that tokenize ahead, and batches queued per session (bounds memory).
OVERLAP_PRODUCERS = 2
OVERLAP_DEPTH = 4
# Fewer texts than sentence-transformers' batch size run on the calling thread: handing one batch to
# another thread would only add latency.
OVERLAP_MIN_TEXTS = 32
# sentence-transformers' default; on CPU also the best measured with the 1,024-token budget.
DEFAULT_CPU_BATCH_SIZE = EngineSettings().batch_size


class EmbeddingEngine:
    """What an Encoder runs on; the Encoder (encoder.py) is its public face. Subclasses set ``model_dir``,
    ``manifest`` and ``truncate_dim`` before calling :meth:`_load`."""

    model_dir: Path
    manifest: Manifest
    truncate_dim: int | None

    def _load(
        self,
        provider: str,
        threads: int | None,
        variant: str,
        *,
        overlap: bool | None,
        sessions: int | None,
        io_binding: bool,
        profile: bool,
    ) -> None:
        """Choose the variant and settings, open the sessions (Encoder's arguments of the same names)."""
        self.provider = resolve_provider(provider)
        self.variant, variant_file = choose_variant(self.manifest, self.model_dir, variant, self.provider)
        on_cpu = self.provider == "CPUExecutionProvider"
        self.settings, self.profile_path = self._cpu_settings(on_cpu and profile)
        if on_cpu and threads is None and overlap is None and sessions is None:
            threads, overlap, sessions = self.settings.threads, self.settings.overlap, self.settings.sessions
        self._overlap = (not on_cpu) if overlap is None else bool(overlap)
        sessions = thread_count(sessions if sessions is not None else 1, "sessions")
        # what runs, given or tuned: .settings says so (the profile's choice may have been overridden)
        self.settings = dataclasses.replace(self.settings, sessions=sessions, threads=threads, overlap=self._overlap)
        if sessions > 1 and not self._overlap:
            raise InvalidArgumentError("sessions > 1 runs sessions side by side and needs overlap=True")
        self._io_binding = bool(io_binding)
        self._device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        # A StaticEmbedding has no graph: numpy takes its rows from the table
        # (docs/performance.md#staticembedding-model2vec-style-models).
        self._static_table: np.ndarray | None = None
        if self.manifest.architecture == "StaticEmbedding":
            self._static_table = read_safetensors(self.model_dir / variant_file).get("embedding.weight")
            if self._static_table is None:
                raise ModelLoadError(f"{self.model_dir / variant_file} has no embedding.weight")
        self._sessions = [
            create_session(self.model_dir / variant_file, self.provider, threads)
            for _ in range(sessions if self._static_table is None else 0)
        ]
        self._session = self._sessions[0] if self._sessions else None
        self._runner = (
            OverlappedRunner(sessions, OVERLAP_PRODUCERS, OVERLAP_DEPTH * sessions)
            if self._overlap and self._sessions
            else None
        )
        graph_inputs = self._session.get_inputs() if self._session else []
        self._input_names = [graph_input.name for graph_input in graph_inputs] or list(self.manifest.input_names)
        unknown = [name for name in self._input_names if name not in MODEL_INPUTS]
        if unknown:
            raise ModelLoadError(f"{variant_file} takes inputs {unknown} that onnxembed cannot feed")
        outputs = [output.name for output in self._session.get_outputs()] if self._session else []
        # A pooled graph (export --pool-in-graph) pools and normalizes itself: only (batch, dim) comes back.
        self._pooled = POOLED_OUTPUT in outputs
        self._output_name = POOLED_OUTPUT if self._pooled else self.manifest.output_name
        if self._session and self._output_name not in outputs:
            raise ModelLoadError(f"{variant_file} has no output {self._output_name!r} (outputs: {outputs})")
        self._tokenizer = TextTokenizer(self.model_dir, self.manifest)
        self._dense = [read_dense_layer(self.model_dir, layer) for layer in self.manifest.dense]
        self._batcher = Batcher.for_model(self._tokenizer, self.manifest, self.provider, self.variant)
        if self._static_table is not None:
            # no session run to amortize: batches sorted by length and filled pad least
            self._batcher = dataclasses.replace(self._batcher, run_cost=0)

    def _cpu_settings(self, read_profile: bool) -> tuple[EngineSettings, Path | None]:
        """The tuned settings for this variant when a profile holds for it, else the CPU's defaults."""
        # stacklevel: find_profile, here, _load, Encoder.__init__: the warning names the Encoder(...) line
        found = find_profile(self.model_dir, stacklevel=4) if read_profile else None
        try:
            tuned = tuned_settings(found[1], self.variant) if found else None
        except ValueError as error:
            assert found is not None
            warnings.warn(
                f"ignoring the tuning profile {found[0]}: {error}; the defaults apply "
                f"(rerun `onnxembed tune {self.model_dir}`)",
                stacklevel=4,
            )
            tuned = None
        if found is None or tuned is None:
            return default_settings(), None
        logger.info("%s: %s from %s", self.variant, tuned.describe(), found[0])
        return tuned, found[0]

    def _output_dim(self, truncate_dim: int | None) -> int:
        return self.manifest.dim if truncate_dim is None else min(self.manifest.dim, truncate_dim)

    def _batches(self, texts: list[str], prompt: str = "", max_batch_tokens: int | None = None) -> Iterator[Batch]:
        """The batches ``encode(texts, prompt=prompt, max_batch_tokens=...)`` runs, tokenized and padded on the
        calling thread: (indices into ``texts``, padded input arrays). For loops that run batches themselves
        (the server's workers); :meth:`_embed_batch` turns each into embeddings."""
        self._excluded_prompt_length(prompt)  # a pooled variant that cannot leave the prompt out fails here
        max_batch_tokens = max_batch_tokens if max_batch_tokens is not None else self._default_max_batch_tokens()
        for job in self._plan(texts, self._default_batch_size(max_batch_tokens), max_batch_tokens, prompt):
            yield from job()

    def _embed_batch(self, arrays: dict[str, np.ndarray], prompt: str = "") -> np.ndarray:
        """(rows, dim) float32 embeddings of one batch from :meth:`_batches` (made with the same ``prompt``), as
        ``encode`` returns them: pooled, normalized if the model normalizes, cut to ``truncate_dim``. Runs
        on the first session, from any thread."""
        rows = self._embed(self._session, arrays, arrays["attention_mask"], self._excluded_prompt_length(prompt))
        return rows[:, : self._output_dim(self.truncate_dim)]

    def _default_max_batch_tokens(self) -> int:
        on_cpu = self.provider == "CPUExecutionProvider"
        return self.settings.max_batch_tokens if on_cpu else default_max_batch_tokens(self.provider)

    def _default_batch_size(self, max_batch_tokens: int) -> int:
        # Models whose vectors depend on their padding run sentence-transformers' own batches of 32 everywhere
        # (sentence_transformers_batches: left padding with absolute positions).
        if sentence_transformers_batches(self.manifest):
            return DEFAULT_CPU_BATCH_SIZE
        return self.settings.batch_size if self.provider == "CPUExecutionProvider" else max_batch_tokens

    def _excluded_prompt_length(self, prompt: str) -> int | None:
        """Tokens of ``prompt`` that pooling leaves out (include_prompt=False), else None."""
        if not prompt or self.manifest.include_prompt:
            return None
        if self._pooled:
            raise InvalidArgumentError(
                f"variant {self.variant!r} pools inside the graph and cannot leave the prompt out of the pooling "
                "(include_prompt=False); load a variant that is not pooled"
            )
        return self._tokenizer.prompt_length(prompt)

    def _plan(
        self, texts: list[str], batch_size: int, max_batch_tokens: int, prompt: str
    ) -> list[Callable[[], Iterator[Batch]]]:
        return self._batcher.plan(texts, prompt, batch_size, max_batch_tokens)

    def _embed(self, session: Any, inputs: dict[str, Any], mask: np.ndarray, prompt_length: int | None) -> np.ndarray:
        """One batch through one session, pooled and normalized: (rows, the model's dim). ``inputs``: numpy
        arrays or OrtValues already on the device; ``mask``: the batch's attention mask, in numpy."""
        result = self._run(session, inputs)
        if self._pooled:
            return result
        if prompt_length is not None:
            mask = exclude_prompt(mask, prompt_length)
        return self._head(pool(result, mask, self.manifest.pooling_modes))

    def _head(self, pooled: np.ndarray) -> np.ndarray:
        """The modules after pooling: each Dense layer, then Normalize if the model has it."""
        for weight, bias, activation in self._dense:
            pooled = dense(pooled, weight, bias, activation)
        return normalize(pooled) if self.manifest.normalize else pooled

    def _encode_into(
        self,
        out: np.ndarray,
        texts: list[str],
        batch_size: int,
        max_batch_tokens: int,
        prompt: str,
        prompt_length: int | None,
        show_progress_bar: bool,
    ) -> None:
        progress = progress_bar(len(texts), show_progress_bar, "Encoding", "text")
        jobs = self._plan(texts, batch_size, max_batch_tokens, prompt)
        lock = threading.Lock()

        def worker(session: Any) -> Callable[[tuple[Any, ...]], None]:
            def run(batch: tuple[Any, ...]) -> None:
                indices, arrays, *on_device = batch  # on_device: the inputs already copied, with io_binding
                inputs = on_device[0] if on_device else arrays
                result = self._embed(session, inputs, arrays["attention_mask"], prompt_length)
                out[indices] = result[:, : out.shape[1]]
                if progress is not None:
                    with lock:
                        progress.update(len(indices))

            return run

        try:
            if self._runner is not None and len(texts) >= OVERLAP_MIN_TEXTS:
                if self._io_binding:
                    jobs = [partial(self._on_device, job) for job in jobs]
                self._runner.run(jobs, [worker(session) for session in self._sessions])
            else:
                run_serial(jobs, worker(self._session))
        finally:
            if progress is not None:
                progress.close()

    def _on_device(self, job: Callable[[], Iterator[Batch]]) -> Iterator[tuple[Any, ...]]:
        """The job's batches and their graph inputs copied to the device (on the producer's thread)."""
        for indices, arrays in job():
            device = {name: OrtValue.ortvalue_from_numpy(arrays[name], self._device, 0) for name in self._input_names}
            yield indices, arrays, device

    def _run(self, session: Any, arrays: dict[str, Any]) -> np.ndarray:
        """One batch through one session: (batch, seq, hidden) token embeddings, or (batch, dim) if pooled.
        ``arrays`` are numpy arrays or OrtValues already on the device."""
        if self._static_table is not None:
            return self._static_table[arrays["input_ids"]]
        if not self._io_binding:
            feed = {name: arrays[name] for name in self._input_names}
            (result,) = session.run([self._output_name], feed)
            return np.asarray(result)
        binding = session.io_binding()
        for name in self._input_names:
            value = arrays[name]
            if isinstance(value, OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, value)
        binding.bind_output(self._output_name, "cpu")
        session.run_with_iobinding(binding)
        (result,) = binding.copy_outputs_to_cpu()
        return np.asarray(result)
