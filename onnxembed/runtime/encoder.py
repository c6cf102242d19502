"""Encoder: an exported model directory -> sentence embeddings, without torch.

In scope: sentence-transformers' encode API (argument names and checks, prompts, truncate_dim, normalizing
and quantizing the result, streaming blocks, similarity).
Not in scope: loading the graph and running batches (engine.py), building sessions (session.py), tokenizing
(tokenize.py), the math (kernels/).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from onnxembed._checks import (
    DOCUMENT_PROMPT_NAMES,
    TORCH_DEVICES,
    check_device,
    checked_texts,
    model_path,
    one_of_inputs,
    positive_int,
    resolve_prompt,
    unordered_or_keyed,
)
from onnxembed.errors import ArgumentTypeError, InvalidArgumentError
from onnxembed.kernels import normalize, similarity, similarity_pairwise
from onnxembed.kernels.quantization import PRECISIONS, Precision, quantize_embeddings
from onnxembed.kernels.similarity import check_similarity_fn
from onnxembed.manifest import RERANKER, SPARSE, Manifest, ModelLoadError
from onnxembed.runtime.engine import EmbeddingEngine


class Encoder(EmbeddingEngine):
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
        similarity_fn_name: The function of :meth:`similarity` (None: the model's), as SentenceTransformer's.

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
        similarity_fn_name: str | None = None,
    ) -> None:
        self.model_dir = model_path(model_dir)
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
        # the model's own name as saved (an odd one fails only in similarity(), as before); one given is checked
        self._similarity_fn_name = self.manifest.similarity_fn_name
        if similarity_fn_name is not None:
            self.similarity_fn_name = similarity_fn_name
        self._load(
            provider, threads, variant, overlap=overlap, sessions=sessions, io_binding=io_binding, profile=profile
        )

    @property
    def dim(self) -> int:
        """Length of one embedding (after truncate_dim)."""
        return self._output_dim(self.truncate_dim)

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
        """The similarity function of :meth:`similarity`: "cosine", "dot", "euclidean" or "manhattan" (the
        model's unless set, as on a SentenceTransformer)."""
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, name: Any) -> None:
        # sentence-transformers' SimilarityFunction enum too, by its value ("cosine", ...)
        self._similarity_fn_name = check_similarity_fn(getattr(name, "value", name))

    @property
    def default_prompt_name(self) -> str | None:
        """The prompt ``encode`` uses when given none (a key of :attr:`prompts`), or None."""
        return self.manifest.default_prompt_name

    @property
    def device(self) -> str:
        """Where the provider runs, in torch's words ("cpu", "cuda"); the provider's name for others."""
        return TORCH_DEVICES.get(self.provider, self.provider)

    def get_sentence_embedding_dimension(self) -> int:
        """:attr:`dim`, by sentence-transformers' name."""
        return self.dim

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
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        output_value: str | None = "sentence_embedding",
        device: str | None = None,
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
            convert_to_numpy: One array (True) or a list of one array per text (False).
            convert_to_tensor: Not supported (the runtime has no torch); raises.
            output_value: "sentence_embedding" only (token embeddings are not carried); others raise.
            device: None, or the device this Encoder's provider runs on ("cpu", "cuda"); the provider is
                chosen with ``Encoder(..., provider=...)``, so another device raises.

        Returns:
            ``(n, dim)`` float32 in input order, or ``(dim,)`` for a single str; int8/uint8 for those
            precisions, ``(n, dim / 8)`` packed bits for binary/ubinary.

        Raises:
            ArgumentTypeError: ``inputs`` is not a str or an iterable of str.
            InvalidArgumentError: An unknown prompt name or precision, a bad number, or one of
                sentence-transformers' options this runtime cannot honour (convert_to_tensor, output_value,
                another device).

        Example:
            >>> embeddings = encoder.encode(["first text", "second text"], prompt_name="query")
            >>> embeddings.shape, embeddings.dtype
            ((2, 384), dtype('float32'))
        """
        sentences = one_of_inputs(inputs, sentences, "a str or an iterable of str")
        self._check_torch_options(convert_to_tensor, output_value, device)
        single = isinstance(sentences, str)
        texts: list[str] = [sentences] if isinstance(sentences, str) else checked_texts(sentences)
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
        if not convert_to_numpy:
            return embeddings[0] if single else list(embeddings)  # type: ignore[return-value]
        return embeddings[0] if single else embeddings

    def _check_torch_options(self, convert_to_tensor: bool, output_value: str | None, device: str | None) -> None:
        """Refuse, by name, what sentence-transformers' encode does with torch and this runtime cannot."""
        if convert_to_tensor:
            raise InvalidArgumentError("convert_to_tensor=True needs torch; the onnxembed runtime returns numpy arrays")
        if output_value != "sentence_embedding":
            raise InvalidArgumentError(
                f"output_value={output_value!r} is not supported: an export carries sentence embeddings only"
            )
        check_device(device, self.provider, "Encoder")

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
            names = ("query",) if task == "query" else DOCUMENT_PROMPT_NAMES
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
        unordered_or_keyed(sentences, "sentences")
        # resolved once, here: its warning (prompt and prompt_name both given) then names the caller's line
        prompt_text = resolve_prompt(self.manifest.prompts, self.manifest.default_prompt_name, prompt_name, prompt)
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
                prompt=prompt_text,
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
        return similarity(a, b, self.similarity_fn_name)

    def similarity_pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The similarity of a[i] and b[i] with the model's similarity function, as
        ``SentenceTransformer.similarity_pairwise``.

        Args:
            a: (n, dim) embeddings.
            b: (n, dim) embeddings.

        Returns:
            (n,) float32 scores (float64 for two float64 arrays; 0-d for two (dim,) vectors).
        """
        return similarity_pairwise(a, b, self.similarity_fn_name)


def _checked_truncate_dim(truncate_dim: int | None) -> int | None:
    return None if truncate_dim is None else positive_int(truncate_dim, "truncate_dim")
