"""Encoder: an exported model directory -> sentence embeddings, without torch.

In scope: validating input, prompts, sorting texts into length-homogeneous batches, running the
session, pooling and normalizing (via kernels), restoring input order.
Not in scope: building sessions (session.py), tokenizing (tokenize.py), the math (kernels/).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime import OrtValue

from onnxembed._checks import one_of_inputs, positive_int, resolve_prompt
from onnxembed.errors import ArgumentTypeError, InvalidArgumentError
from onnxembed.kernels import exclude_prompt, normalize, pool, similarity, similarity_pairwise
from onnxembed.kernels.dense import dense
from onnxembed.kernels.quantization import PRECISIONS, Precision, quantize_embeddings
from onnxembed.manifest import MODEL_INPUTS, POOLED_OUTPUT, RERANKER, SPARSE, Manifest, ModelLoadError
from onnxembed.runtime.batching import Batch, default_max_batch_tokens, default_run_cost, plan
from onnxembed.runtime.pipeline import OverlappedRunner, run_serial
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


class Encoder:
    """Encode text with a model exported by ``onnxembed export``, as ``SentenceTransformer.encode`` would.

    An Encoder is safe to share between threads.

    Args:
        model_dir: A directory written by ``onnxembed export``.
        provider: "auto" (CUDA when onnxruntime has it, else CPU), "cpu", "cuda" or an onnxruntime
            provider name.
        threads: Intra-op threads per session (None: the tuning profile's, else onnxruntime's default, one
            per core).
        variant: "auto" (the fastest variant whose accuracy the export accepted for this provider), a variant
            of the manifest ("fp32", "int8", "fp16", "optimized", "fp16-pooled", ...) or a graph file name;
            ``.variant`` says which was loaded.
        truncate_dim: Keep the first dimensions of every embedding (Matryoshka models; None: the model's own
            setting).
        overlap: Tokenize and pad the next batches on other threads while the model runs (None: on for GPU
            providers; on CPU the tuning profile's, else off, where both would compete for the same cores).
        sessions: Sessions run side by side (needs ``overlap``; None: the tuning profile's, else 1); on CPU,
            ``sessions=os.cpu_count(), threads=1`` suits batch jobs (docs/performance.md).
        io_binding: Copy each batch to the device on the tokenizing thread and bind it (GPU only).
        profile: On CPU, read the settings ``onnxembed tune`` measured for this model, CPU and onnxruntime
            (``.profile_path`` says which file; one measured elsewhere is ignored with a warning). Its sessions,
            threads and overlap apply when none of the three is given, its token budget and batch size when
            ``encode`` is not given them. Loading never measures anything.

    Raises:
        ModelLoadError: ``model_dir`` is not a complete export.
        InvalidArgumentError: An unknown provider, variant or a bad number.

    Example:
        >>> from onnxembed import Encoder
        >>> encoder = Encoder("out/")
        >>> encoder.encode(["first text", "second text"]).shape
        (2, 384)
    """

    def __init__(
        self,
        model_dir: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        variant: str = "auto",
        truncate_dim: int | None = None,
        *,
        overlap: bool | None = None,
        sessions: int | None = None,
        io_binding: bool = False,
        profile: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.read(self.model_dir)
        if self.manifest.task == RERANKER:
            raise ModelLoadError(
                f"{self.model_dir} is a reranker (CrossEncoder) export; load it with onnxembed.Reranker"
            )
        if self.manifest.task == SPARSE:
            raise ModelLoadError(
                f"{self.model_dir} is a sparse (SPLADE) SparseEncoder export; load it with onnxembed.SparseEncoder"
            )
        self.truncate_dim = _checked_truncate_dim(
            truncate_dim if truncate_dim is not None else self.manifest.truncate_dim
        )
        self.provider = resolve_provider(provider)
        self.variant, variant_file = choose_variant(self.manifest, self.model_dir, variant, self.provider)
        on_cpu = self.provider == "CPUExecutionProvider"
        self.settings, self.profile_path = self._cpu_settings(on_cpu and profile)
        if on_cpu and threads is None and overlap is None and sessions is None:
            threads, overlap, sessions = self.settings.threads, self.settings.overlap, self.settings.sessions
        self._overlap = (not on_cpu) if overlap is None else bool(overlap)
        sessions = positive_int(sessions if sessions is not None else 1, "sessions")
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
        # Shapes that repeat let a GPU reuse its kernels' choices; results do not depend on padding length.
        self._pad_multiple = 1 if on_cpu else 8
        # Where batches end (batching.py): int8 runs cost less to start than float ones.
        self._run_cost = default_run_cost(self.provider, quantized=self.variant.startswith("int8"))
        if self._static_table is not None:
            self._run_cost = 0  # no session run to amortize: batches sorted by length and filled pad least

    def _cpu_settings(self, read_profile: bool) -> tuple[EngineSettings, Path | None]:
        """The tuned settings for this variant when a profile holds for it, else the CPU's defaults."""
        found = find_profile(self.model_dir, stacklevel=3) if read_profile else None  # the warning names Encoder()
        tuned = tuned_settings(found[1], self.variant) if found else None
        if found is None or tuned is None:
            return default_settings(), None
        logger.info("%s: %s from %s", self.variant, tuned.describe(), found[0])
        return tuned, found[0]

    @property
    def dim(self) -> int:
        """Length of one embedding (after truncate_dim)."""
        return self._output_dim(self.truncate_dim)

    def _output_dim(self, truncate_dim: int | None) -> int:
        return self.manifest.dim if truncate_dim is None else min(self.manifest.dim, truncate_dim)

    @property
    def max_seq_length(self) -> int:
        """Texts are truncated to this many tokens (special tokens included); 2**31 - 1 for a StaticEmbedding
        model whose tokenizer truncates nothing (sentence-transformers says ``math.inf``)."""
        return self.manifest.max_seq_length

    @property
    def prompts(self) -> dict[str, str]:
        """The model's named prompts, e.g. {"query": "query: "}."""
        return dict(self.manifest.prompts)

    @property
    def similarity_fn_name(self) -> str:
        """The model's similarity function: "cosine", "dot", "euclidean" or "manhattan"."""
        return self.manifest.similarity_fn_name

    def __repr__(self) -> str:
        return f"Encoder({str(self.model_dir)!r}, provider={self.provider!r}, variant={self.variant!r}, dim={self.dim})"

    def encode(
        self,
        inputs: str | Iterable[str] | None = None,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool = False,
        precision: Precision = "float32",
        normalize_embeddings: bool | None = None,
        truncate_dim: int | None = None,
        max_batch_tokens: int | None = None,
        sentences: str | Iterable[str] | None = None,
    ) -> np.ndarray:
        """Embed texts as ``SentenceTransformer.encode`` does, step by step.

        ``prompt`` (a string) or ``prompt_name`` (a key of :attr:`prompts`) is prepended to every text, and
        without either the model's default prompt; the model pools, applies its Dense layers and, if it has a
        Normalize module, normalizes; ``truncate_dim`` keeps the first dimensions, so a normalizing model's
        truncated vectors are *not* unit length unless ``normalize_embeddings=True``, which L2-normalizes after
        truncating; ``precision`` other than "float32" quantizes the whole result as sentence-transformers'
        ``quantize_embeddings`` does.

        Batches hold at most ``batch_size`` texts and ``max_batch_tokens`` padded tokens (defaults: measured
        per provider, docs/performance.md). fp32 and fused graphs give the same vectors however texts are
        batched; int8 graphs quantize activations per batch, so their vectors move slightly with which texts
        share a batch (``batch_size=1`` makes them depend on the text alone).

        Args:
            inputs: One text, or an iterable of texts (``sentences=`` is accepted too, as in
                sentence-transformers before 5.x).
            prompt_name: A key of :attr:`prompts`.
            prompt: A prompt string; wins over ``prompt_name``.
            batch_size: Texts per batch at most (default: 32 on CPU and for left-padded models, as
                sentence-transformers; on a GPU otherwise only the token budget limits it).
            show_progress_bar: Show a tqdm progress bar.
            precision: "float32", "int8", "uint8", "binary" or "ubinary".
            normalize_embeddings: L2-normalize the result (after ``truncate_dim``).
            truncate_dim: Keep this many leading dimensions (default: the Encoder's).
            max_batch_tokens: Padded tokens per batch at most (default: the best measured for the provider).
            sentences: The older name of ``inputs``.

        Returns:
            ``(n, dim)`` float32 in input order, or ``(dim,)`` for a single str; int8/uint8 for those
            precisions, ``(n, dim / 8)`` packed bits for binary/ubinary.

        Raises:
            ArgumentTypeError: ``inputs`` is not a str or an iterable of str.
            InvalidArgumentError: An unknown prompt name or precision, or a bad number.

        Example:
            >>> embeddings = encoder.encode(["first text", "second text"], prompt_name="query")
            >>> embeddings.shape, embeddings.dtype
            ((2, 384), dtype('float32'))
        """
        sentences = one_of_inputs(inputs, sentences, "a str or an iterable of str")
        single = isinstance(sentences, str)
        texts: list[str] = [sentences] if isinstance(sentences, str) else _checked_texts(sentences)
        max_batch_tokens = positive_int(
            max_batch_tokens if max_batch_tokens is not None else self._default_max_batch_tokens(), "max_batch_tokens"
        )
        batch_size = positive_int(
            batch_size if batch_size is not None else self._default_batch_size(max_batch_tokens), "batch_size"
        )
        if precision not in PRECISIONS:
            raise InvalidArgumentError(f"precision {precision!r} is not supported; choose from {PRECISIONS}")
        truncate_dim = _checked_truncate_dim(truncate_dim if truncate_dim is not None else self.truncate_dim)
        dim = self._output_dim(truncate_dim)
        prompt_text = resolve_prompt(self.manifest.prompts, self.manifest.default_prompt_name, prompt_name, prompt)
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

    def encode_query(self, inputs: str | Iterable[str] | None = None, **options: Any) -> np.ndarray:
        """:meth:`encode` with the model's "query" prompt, as ``SentenceTransformer.encode_query``.

        The "query" prompt is used when neither ``prompt`` nor ``prompt_name`` is given and the model has one
        (else the default prompt, as :meth:`encode`); other options as in :meth:`encode`.

        Example:
            >>> queries = encoder.encode_query(["what is onnx?"])
        """
        return self._encode_as("query", inputs, options)

    def encode_document(self, inputs: str | Iterable[str] | None = None, **options: Any) -> np.ndarray:
        """:meth:`encode` with the model's "document" prompt, as ``SentenceTransformer.encode_document``.

        The first of the prompts "document", "passage" and "corpus" that the model defines is used when neither
        ``prompt`` nor ``prompt_name`` is given; other options as in :meth:`encode`.

        Example:
            >>> documents = encoder.encode_document(["ONNX is an open format for models."])
        """
        return self._encode_as("document", inputs, options)

    def _encode_as(self, task: str, inputs: str | Iterable[str] | None, options: dict[str, Any]) -> np.ndarray:
        if options.get("prompt_name") is None and options.get("prompt") is None:
            # sentence-transformers' order of names for each task.
            names = ("query",) if task == "query" else ("document", "passage", "corpus")
            options["prompt_name"] = next((name for name in names if name in self.manifest.prompts), None)
        return self.encode(inputs, **options)

    def encode_iter(
        self,
        inputs: Iterable[str] | None = None,
        *,
        chunk_size: int = 8192,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        precision: Precision = "float32",
        normalize_embeddings: bool | None = None,
        truncate_dim: int | None = None,
        max_batch_tokens: int | None = None,
        sentences: Iterable[str] | None = None,
    ) -> Iterator[np.ndarray]:
        """Embed a stream of texts block by block, holding one block of texts at a time.

        For corpora larger than memory (the CLI streams these blocks into an .npy file). Options as in
        :meth:`encode`, except int8/uint8 precision, whose ranges would differ from block to block: quantize
        the float32 result with ``onnxembed.kernels.quantize_embeddings`` and calibration embeddings instead.

        Args:
            inputs: An iterable of texts, read lazily (``sentences=`` is accepted too).
            chunk_size: Texts per yielded block at most.

        Yields:
            ``(k, dim)`` blocks, ``k <= chunk_size``, in input order.

        Raises:
            ArgumentTypeError: ``inputs`` is a str or holds something other than str.
            InvalidArgumentError: int8/uint8 precision, or options :meth:`encode` refuses.

        Example:
            >>> for block in encoder.encode_iter(open("corpus.txt"), chunk_size=4096):
            ...     index.add(block)
        """
        sentences = one_of_inputs(inputs, sentences, "a str or an iterable of str")
        chunk_size = positive_int(chunk_size, "chunk_size")
        if precision in ("int8", "uint8"):
            raise InvalidArgumentError(
                f"precision {precision!r} takes its ranges from all embeddings at once; encode_iter cannot. "
                "Use float32 and quantize_embeddings(..., calibration_embeddings=...)"
            )
        if isinstance(sentences, (str, bytes, bytearray)) or not isinstance(sentences, Iterable):
            raise ArgumentTypeError(f"sentences must be an iterable of str; got {type(sentences).__name__}")
        iterator = iter(sentences)
        offset = 0
        while chunk := list(islice(iterator, chunk_size)):
            for index, text in enumerate(chunk):
                if not isinstance(text, str):
                    raise ArgumentTypeError(f"sentences[{offset + index}] is {type(text).__name__}, not str")
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
        """Every pair's similarity with the model's similarity function, as ``SentenceTransformer.similarity``.

        Args:
            a: (n, dim) embeddings.
            b: (m, dim) embeddings.

        Returns:
            (n, m) float32 scores (negative distances for euclidean and manhattan, as sentence-transformers).

        Example:
            >>> embeddings = encoder.encode(["a cat", "a dog", "a car"])
            >>> encoder.similarity(embeddings, embeddings).shape
            (3, 3)
        """
        return similarity(a, b, self.manifest.similarity_fn_name)

    def similarity_pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The similarity of a[i] and b[i] with the model's similarity function, as
        ``SentenceTransformer.similarity_pairwise``.

        Args:
            a: (n, dim) embeddings.
            b: (n, dim) embeddings.

        Returns:
            (n,) float32 scores.
        """
        return similarity_pairwise(a, b, self.manifest.similarity_fn_name)

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
        return rows[:, : self.dim]

    def _default_max_batch_tokens(self) -> int:
        on_cpu = self.provider == "CPUExecutionProvider"
        return self.settings.max_batch_tokens if on_cpu else default_max_batch_tokens(self.provider)

    def _default_batch_size(self, max_batch_tokens: int) -> int:
        # Left-padded models run sentence-transformers' own batches of 32 (see batching.py) everywhere.
        if self.manifest.padding_side == "left":
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


def _checked_truncate_dim(truncate_dim: int | None) -> int | None:
    return None if truncate_dim is None else positive_int(truncate_dim, "truncate_dim")


def _checked_texts(sentences: Iterable[str]) -> list[str]:
    if isinstance(sentences, (bytes, bytearray)) or not isinstance(sentences, Iterable):
        raise ArgumentTypeError(f"sentences must be a str or an iterable of str; got {type(sentences).__name__}")
    texts = list(sentences)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ArgumentTypeError(f"sentences[{index}] is {type(text).__name__}, not str")
    return texts


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Encoding", unit="text")
