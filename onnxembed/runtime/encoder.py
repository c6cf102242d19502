"""Encoder: an exported model directory -> sentence embeddings, without torch.

In scope: validating input, prompts, sorting texts into length-homogeneous batches, running the
session, pooling and normalizing (via kernels), restoring input order.
Not in scope: building sessions (session.py), tokenizing (tokenize.py), the math (kernels/).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime import OrtValue

from onnxembed._checks import positive_int
from onnxembed.kernels import exclude_prompt, normalize, pool, similarity, similarity_pairwise
from onnxembed.kernels.quantization import PRECISIONS, Precision, quantize_embeddings
from onnxembed.manifest import MODEL_INPUTS, POOLED_OUTPUT, Manifest, ModelLoadError
from onnxembed.runtime.batching import Batch, default_max_batch_tokens, default_run_cost, plan
from onnxembed.runtime.pipeline import OverlappedRunner, run_serial
from onnxembed.runtime.session import create_session, resolve_provider
from onnxembed.runtime.tokenize import TextTokenizer
from onnxembed.runtime.variants import choose_variant

logger = logging.getLogger(__name__)

# With overlap: threads that tokenize ahead, and batches queued per session (bounds memory).
OVERLAP_PRODUCERS = 2
OVERLAP_DEPTH = 4
# Fewer texts than sentence-transformers' batch size run on the calling thread: handing one batch to
# another thread would only add latency.
OVERLAP_MIN_TEXTS = 32
# sentence-transformers' default; on CPU also the best measured with the 1,024-token budget.
DEFAULT_CPU_BATCH_SIZE = 32


class Encoder:
    """Encode text with a model exported by ``onnxembed export``.

    ``Encoder(path, provider="auto", threads=None, variant="auto", truncate_dim=None)``: provider is
    "auto", "cpu", "cuda" or an onnxruntime provider name; threads is the number of intra-op threads
    (None: onnxruntime's default, one per core); variant is "auto", a variant of the manifest ("fp32",
    "int8", "fp16", "optimized", "fp16-pooled", ...) or a graph file name (see :func:`choose_variant`;
    ``.variant`` says which was loaded); truncate_dim keeps the first dimensions of every embedding
    (Matryoshka models; None: the model's own setting). An Encoder is safe to share between threads.

    How batches run (defaults: measured best per provider, bench/results/h100-*.md): ``overlap``
    tokenizes and pads the next batches on other threads while the model runs (default: on for GPU
    providers, off on CPU, where both would compete for the same cores); ``sessions`` runs that many
    sessions side by side (on CUDA each has its own stream; with ``overlap`` only; 2 was slower than 1 on
    an H100); ``io_binding`` copies each batch to the device on the tokenizing thread and binds it
    (default off: on an H100 it ran sentences 14-20% slower and paragraphs 3-25% faster).
    """

    def __init__(
        self,
        path: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        variant: str = "auto",
        truncate_dim: int | None = None,
        *,
        overlap: bool | None = None,
        sessions: int = 1,
        io_binding: bool = False,
    ) -> None:
        self.path = Path(path)
        self.manifest = Manifest.read(self.path)
        self.truncate_dim = _checked_truncate_dim(
            truncate_dim if truncate_dim is not None else self.manifest.truncate_dim
        )
        self.provider = resolve_provider(provider)
        self.variant, variant_file = choose_variant(self.manifest, self.path, variant, self.provider)
        on_cpu = self.provider == "CPUExecutionProvider"
        self._overlap = (not on_cpu) if overlap is None else bool(overlap)
        sessions = positive_int(sessions, "sessions")
        if sessions > 1 and not self._overlap:
            raise ValueError("sessions > 1 runs sessions side by side and needs overlap=True")
        self._io_binding = bool(io_binding)
        self._device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self._sessions = [create_session(self.path / variant_file, self.provider, threads) for _ in range(sessions)]
        self._session = self._sessions[0]
        self._runner = (
            OverlappedRunner(sessions, OVERLAP_PRODUCERS, OVERLAP_DEPTH * sessions) if self._overlap else None
        )
        self._input_names = [graph_input.name for graph_input in self._session.get_inputs()]
        unknown = [name for name in self._input_names if name not in MODEL_INPUTS]
        if unknown:
            raise ModelLoadError(f"{variant_file} takes inputs {unknown} that onnxembed cannot feed")
        outputs = [output.name for output in self._session.get_outputs()]
        # A pooled graph (export --pool-in-graph) pools and normalizes itself: only (batch, dim) comes back.
        self._pooled = POOLED_OUTPUT in outputs
        self._output_name = POOLED_OUTPUT if self._pooled else self.manifest.output_name
        if self._output_name not in outputs:
            raise ModelLoadError(f"{variant_file} has no output {self._output_name!r} (outputs: {outputs})")
        self._tokenizer = TextTokenizer(self.path, self.manifest)
        # Shapes that repeat let a GPU reuse its kernels' choices; results do not depend on padding length.
        self._pad_multiple = 1 if on_cpu else 8
        # Where batches end (batching.py): int8 runs cost less to start than float ones.
        self._run_cost = default_run_cost(self.provider, quantized=self.variant.startswith("int8"))

    @property
    def dim(self) -> int:
        """Length of one embedding (after truncate_dim)."""
        return self._output_dim(self.truncate_dim)

    def _output_dim(self, truncate_dim: int | None) -> int:
        return self.manifest.dim if truncate_dim is None else min(self.manifest.dim, truncate_dim)

    @property
    def max_seq_length(self) -> int:
        """Texts are truncated to this many tokens (special tokens included)."""
        return self.manifest.max_seq_length

    @property
    def prompts(self) -> dict[str, str]:
        """The model's named prompts, e.g. {"query": "query: "}."""
        return dict(self.manifest.prompts)

    @property
    def similarity_fn_name(self) -> str:
        return self.manifest.similarity_fn_name

    def __repr__(self) -> str:
        return f"Encoder({str(self.path)!r}, provider={self.provider!r}, variant={self.variant!r}, dim={self.dim})"

    def encode(
        self,
        sentences: str | Iterable[str],
        batch_size: int | None = None,
        normalize_embeddings: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        show_progress_bar: bool = False,
        precision: Precision = "float32",
        truncate_dim: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed sentences: (n, dim) in input order, or (dim,) for a single str.

        As sentence-transformers' ``encode``, step by step: ``prompt`` (a string) or ``prompt_name`` (a
        key of ``prompts``) is prepended to every text, and without either the model's default prompt;
        the model pools and, if it has a Normalize module, normalizes; ``truncate_dim`` (default: the
        Encoder's) keeps the first dimensions — so a normalizing model's truncated vectors are *not*
        unit length unless ``normalize_embeddings=True``, which L2-normalizes after truncating;
        ``precision`` other than "float32" quantizes the whole result as ``quantize_embeddings`` does
        (int8/uint8 ranges from these embeddings; binary/ubinary packed to (n, dim / 8)).

        Batching does not change the results: a batch holds at most ``batch_size`` texts (default: 32 on
        CPU and for left-padded models, as sentence-transformers; on a GPU otherwise only the token budget
        limits it) and at most
        ``max_batch_tokens`` padded tokens (default: the best measured for the provider; see batching.py).
        """
        single = isinstance(sentences, str)
        texts: list[str] = [sentences] if isinstance(sentences, str) else _checked_texts(sentences)
        max_batch_tokens = positive_int(
            max_batch_tokens if max_batch_tokens is not None else default_max_batch_tokens(self.provider),
            "max_batch_tokens",
        )
        batch_size = positive_int(
            batch_size if batch_size is not None else self._default_batch_size(max_batch_tokens), "batch_size"
        )
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported; choose from {PRECISIONS}")
        truncate_dim = _checked_truncate_dim(truncate_dim if truncate_dim is not None else self.truncate_dim)
        dim = self._output_dim(truncate_dim)
        prompt_text = self._resolve_prompt(prompt_name, prompt)
        embeddings = np.empty((len(texts), dim), dtype=np.float32)
        if texts:
            prompt_length = self._excluded_prompt_length(prompt_text or "")
            self._encode_into(
                embeddings, texts, batch_size, max_batch_tokens, prompt_text or "", prompt_length, show_progress_bar
            )
        if normalize_embeddings:
            embeddings = normalize(embeddings)
        if precision != "float32":
            # Zero rows have no ranges of their own; any ranges give the right shape and dtype.
            ranges = None if len(embeddings) else np.zeros((2, dim), dtype=np.float32)
            embeddings = quantize_embeddings(embeddings, precision, ranges=ranges)
        return embeddings[0] if single else embeddings

    def encode_iter(
        self,
        sentences: Iterable[str],
        chunk_size: int = 8192,
        batch_size: int | None = None,
        normalize_embeddings: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        precision: Precision = "float32",
        truncate_dim: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Embed a stream of texts: yields (k, dim) blocks, k <= chunk_size, in input order.

        Holds one chunk of texts at a time, so a corpus larger than memory can be embedded (the CLI
        streams these blocks into an .npy file). Options as in :meth:`encode`, except int8/uint8
        precision, whose ranges would differ from chunk to chunk: quantize the float32 result with
        ``onnxembed.kernels.quantize_embeddings`` and calibration embeddings instead.
        """
        chunk_size = positive_int(chunk_size, "chunk_size")
        if precision in ("int8", "uint8"):
            raise ValueError(
                f"precision {precision!r} takes its ranges from all embeddings at once; encode_iter cannot. "
                "Use float32 and quantize_embeddings(..., calibration_embeddings=...)"
            )
        if isinstance(sentences, (str, bytes, bytearray)) or not isinstance(sentences, Iterable):
            raise TypeError(f"sentences must be an iterable of str; got {type(sentences).__name__}")
        iterator = iter(sentences)
        offset = 0
        while chunk := list(islice(iterator, chunk_size)):
            for index, text in enumerate(chunk):
                if not isinstance(text, str):
                    raise TypeError(f"sentences[{offset + index}] is {type(text).__name__}, not str")
            yield self.encode(
                chunk,
                batch_size=batch_size,
                normalize_embeddings=normalize_embeddings,
                prompt_name=prompt_name,
                prompt=prompt,
                precision=precision,
                truncate_dim=truncate_dim,
                max_batch_tokens=max_batch_tokens,
            )
            offset += len(chunk)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(n, m) similarity matrix with the model's similarity function (cosine, dot, euclidean, manhattan)."""
        return similarity(a, b, self.manifest.similarity_fn_name)

    def similarity_pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(n,) similarity of a[i] and b[i] with the model's similarity function."""
        return similarity_pairwise(a, b, self.manifest.similarity_fn_name)

    def batches(self, texts: list[str], prompt: str = "", max_batch_tokens: int | None = None) -> Iterator[Batch]:
        """The batches ``encode(texts, prompt=prompt, max_batch_tokens=...)`` runs, tokenized and padded on the
        calling thread: (indices into ``texts``, padded input arrays). For loops that run batches themselves
        (the server's workers); :meth:`embed_batch` turns each into embeddings."""
        self._excluded_prompt_length(prompt)  # a pooled variant that cannot leave the prompt out fails here
        max_batch_tokens = max_batch_tokens if max_batch_tokens is not None else default_max_batch_tokens(self.provider)
        for job in self._plan(texts, self._default_batch_size(max_batch_tokens), max_batch_tokens, prompt):
            yield from job()

    def embed_batch(self, arrays: dict[str, np.ndarray], prompt: str = "") -> np.ndarray:
        """(rows, dim) float32 embeddings of one batch from :meth:`batches` (made with the same ``prompt``), as
        ``encode`` returns them: pooled, normalized if the model normalizes, cut to ``truncate_dim``. Runs
        on the first session, from any thread."""
        rows = self._embed(self._session, arrays, arrays["attention_mask"], self._excluded_prompt_length(prompt))
        return rows[:, : self.dim]

    def _default_batch_size(self, max_batch_tokens: int) -> int:
        # Left-padded models run sentence-transformers' own batches of 32 (see batching.py) everywhere.
        capped = self.provider == "CPUExecutionProvider" or self.manifest.padding_side == "left"
        return DEFAULT_CPU_BATCH_SIZE if capped else max_batch_tokens

    def _excluded_prompt_length(self, prompt: str) -> int | None:
        """Tokens of ``prompt`` that pooling leaves out (include_prompt=False), else None."""
        if not prompt or self.manifest.include_prompt:
            return None
        if self._pooled:
            raise ValueError(
                f"variant {self.variant!r} pools inside the graph and cannot leave the prompt out of the pooling "
                "(include_prompt=False); load a variant that is not pooled"
            )
        return self._tokenizer.prompt_length(prompt)

    def _plan(
        self, texts: list[str], batch_size: int, max_batch_tokens: int, prompt: str
    ) -> list[Callable[[], Iterator[Batch]]]:
        return plan(
            texts,
            self._tokenizer,
            prompt,
            batch_size,
            max_batch_tokens,
            self.manifest.padding_side == "left",
            self._pad_multiple,
            self._run_cost,
        )

    def _embed(self, session: Any, inputs: dict[str, Any], mask: np.ndarray, prompt_length: int | None) -> np.ndarray:
        """One batch through one session, pooled and normalized: (rows, the model's dim). ``inputs``: numpy
        arrays or OrtValues already on the device; ``mask``: the batch's attention mask, in numpy."""
        result = self._run(session, inputs)
        if self._pooled:
            return result
        if prompt_length is not None:
            mask = exclude_prompt(mask, prompt_length)
        result = pool(result, mask, self.manifest.pooling_modes)
        return normalize(result) if self.manifest.normalize else result

    def _resolve_prompt(self, prompt_name: str | None, prompt: str | None) -> str | None:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a str; got {type(prompt).__name__}")
            if prompt_name is not None:
                warnings.warn(
                    f"both prompt and prompt_name={prompt_name!r} given; using prompt, as sentence-transformers does",
                    stacklevel=3,
                )
            return prompt
        name = prompt_name if prompt_name is not None else self.manifest.default_prompt_name
        if name is None:
            return None
        if name not in self.manifest.prompts:
            known = ", ".join(repr(key) for key in self.manifest.prompts) or "none"
            raise ValueError(f"prompt_name {name!r} is not one of the model's prompts: {known}")
        return self.manifest.prompts[name]

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
        progress = _progress(len(texts), show_progress_bar)
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


def _checked_truncate_dim(truncate_dim: int | None) -> int | None:
    return None if truncate_dim is None else positive_int(truncate_dim, "truncate_dim")


def _checked_texts(sentences: Iterable[str]) -> list[str]:
    if isinstance(sentences, (bytes, bytearray)) or not isinstance(sentences, Iterable):
        raise TypeError(f"sentences must be a str or an iterable of str; got {type(sentences).__name__}")
    texts = list(sentences)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"sentences[{index}] is {type(text).__name__}, not str")
    return texts


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Encoding", unit="text")
