"""SparseEncoder: an exported SparseEncoder (SPLADE) directory -> sparse vectors of texts, without torch.

In scope: ``SparseEncoder.encode`` / ``encode_query`` / ``encode_document`` / ``decode`` as sentence-transformers
defines them (argument names, prompts, ``max_active_dims``, routing queries and documents of an inference-free
model), results as per-text :class:`~onnxembed.kernels.sparse.SparseEmbedding`, a scipy CSR matrix or dense rows.
Not in scope: sessions (session.py), tokenizing (tokenize.py), batching (batching.py): the same pieces the
Encoder runs on; scoring and search (kernels/sparse.py).

The graph pools inside (exporter/sparse.py), so a batch's (tokens x vocabulary) logits never leave onnxruntime;
they still live inside it, which is why batches get a token budget of their own (_LOGITS_FLOATS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
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
)
from onnxembed.errors import ArgumentTypeError, InvalidArgumentError, ModelLoadError
from onnxembed.kernels.similarity import check_similarity_fn
from onnxembed.kernels.sparse import (
    SparseEmbedding,
    SparseMatrix,
    as_sparse_matrix,
    sparse_rows,
    sparse_similarity,
    sparse_similarity_pairwise,
)
from onnxembed.manifest import POOLED_OUTPUT, SPARSE, Manifest
from onnxembed.runtime.batching import Batch, Batcher, default_max_batch_tokens, with_prompt
from onnxembed.runtime.pipeline import progress_bar
from onnxembed.runtime.session import open_graph, resolve_provider
from onnxembed.runtime.tokenize import TextTokenizer
from onnxembed.runtime.weights import read_safetensors

# sentence-transformers' default batch size for encode.
DEFAULT_BATCH_SIZE = 32
# Tokens x vocabulary of one batch's logits inside the graph, at most (512 MiB of float32): BERT's 30,522 terms
# give batches of at most 4,397 tokens.
_LOGITS_FLOATS = 1 << 27
# encode_document's prompt, the first of these the model has (as sentence-transformers).


DENSE_BLOCK_ROWS = 256


class SparseEncoder:
    """Encode texts into sparse (SPLADE) vectors with a SparseEncoder exported by ``onnxembed export``, as
    sentence-transformers' ``SparseEncoder`` would. Safe to share between threads.

    Args:
        model_dir: A directory written by ``onnxembed export`` from a SparseEncoder.
        provider: "auto" (CUDA when onnxruntime has it, else CPU), "cpu", "cuda" or an onnxruntime provider name.
        threads: Intra-op threads (None: onnxruntime's default, one per core).
        variant: "auto" (the fastest variant whose measured retrieval accuracy the export accepted), a variant of
            the manifest ("fp32", "optimized", "int8", "fp16") or a graph file name; ``.variant`` says which.

    Raises:
        ModelLoadError: ``model_dir`` is not a complete sparse encoder export.
        InvalidArgumentError: An unknown provider or variant.

    Example:
        >>> from onnxembed import SparseEncoder
        >>> model = SparseEncoder("out-splade/")
        >>> query = model.encode_query("what is onnx?")
        >>> model.decode(query, top_k=2)
        [('onnx', 2.31), ('format', 0.87)]
    """

    def __init__(
        self, model_dir: str | Path, provider: str = "auto", threads: int | None = None, variant: str = "auto"
    ) -> None:
        self.model_dir = model_path(model_dir)
        self.manifest = Manifest.read(self.model_dir)
        if self.manifest.task != SPARSE:
            raise ModelLoadError(
                f"{self.model_dir} is a {self.manifest.task} export, not a sparse encoder; load it with "
                f"onnxembed.{'Reranker' if self.manifest.task == 'reranker' else 'Encoder'}"
            )
        self.provider = resolve_provider(provider)
        self._similarity_fn_name = self.manifest.similarity_fn_name
        self.variant, self._session, self._input_names = open_graph(
            self.model_dir, self.manifest, variant, self.provider, threads, POOLED_OUTPUT
        )
        self._tokenizer = TextTokenizer(self.model_dir, self.manifest)
        self._batcher = Batcher.for_model(self._tokenizer, self.manifest, self.provider, self.variant)
        self._static_weight: np.ndarray | None = None
        route = self.manifest.static_route
        if route is not None:
            folder = self.model_dir / route.path
            weight = read_safetensors(folder / "model.safetensors").get("weight")
            if weight is None or weight.ndim != 1:
                raise ModelLoadError(f"{folder / 'model.safetensors'} has no 1-D 'weight' table")
            self._static_weight = np.ascontiguousarray(weight, dtype=np.float32)
            static_manifest = dataclasses.replace(
                self.manifest, max_seq_length=route.max_seq_length, add_special_tokens=False, truncation_side="right"
            )
            self._static_tokenizer = TextTokenizer(folder, static_manifest)

    @property
    def dim(self) -> int:
        """The vocabulary size: every vector's length."""
        return self.manifest.dim

    @property
    def max_active_dims(self) -> int | None:
        """The terms :meth:`encode` keeps per vector by default, as the model was saved (None: all)."""
        return self.manifest.max_active_dims

    @property
    def max_seq_length(self) -> int:
        """Texts are truncated to this many tokens (special tokens included) on the SPLADE side."""
        return self.manifest.max_seq_length

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self.manifest.prompts)

    @property
    def similarity_fn_name(self) -> str:
        """The similarity of :meth:`similarity`: "dot", "cosine", "euclidean" or "manhattan" (the model's,
        "dot" unless it saved another, until set, as on sentence-transformers' SparseEncoder)."""
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

    @property
    def inference_free(self) -> bool:
        """Whether queries go through a per-token weight table (no model run) instead of the graph."""
        return self.manifest.static_route is not None

    def __repr__(self) -> str:
        kind = ", inference-free queries" if self.inference_free else ""
        return (
            f"SparseEncoder({str(self.model_dir)!r}, provider={self.provider!r}, variant={self.variant!r}, "
            f"dim={self.dim}{kind})"
        )

    def encode(
        self,
        inputs: str | Iterable[str] | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = True,
        convert_to_sparse_tensor: bool = True,
        save_to_cpu: bool = False,
        max_active_dims: int | None = None,
        *,
        task: str | None = None,
        convert_to_csr: bool = False,
        max_batch_tokens: int | None = None,
        sentences: Any = None,
        device: Any = None,
    ) -> Any:
        """Encode texts as ``SparseEncoder.encode`` does.

        Args:
            inputs: A text or an iterable of texts (``sentences=`` is accepted too).
            prompt_name: A key of :attr:`prompts`, put before each text.
            prompt: A prompt string; wins over ``prompt_name``.
            batch_size: Texts per batch at most.
            show_progress_bar: Show a tqdm progress bar.
            convert_to_tensor: With dense rows, one (n, dim) array (True) or a list of (dim,) arrays (False).
            convert_to_sparse_tensor: Sparse results (True: one :class:`SparseEmbedding` per text, in place of
                sentence-transformers' sparse COO tensor) or dense (n, dim) float32 rows (False).
            save_to_cpu: Accepted for sentence-transformers' signature; results are always numpy.
            max_active_dims: Keep each vector's heaviest ``max_active_dims`` terms (default: the model's
                :attr:`max_active_dims`, as sentence-transformers 6 saves it; None there keeps all).
            task: The route of an inference-free model ("query", "document"; None: its default route);
                ignored by a model without routes.
            convert_to_csr: Return a ``scipy.sparse.csr_matrix`` (n, dim) (needs scipy).
            max_batch_tokens: Padded tokens per batch at most (default: the provider's, capped so that a batch's
                logits stay under 512 MiB).
            sentences: The older name of ``inputs``.
            device: None, or the device this SparseEncoder's provider runs on ("cpu", "cuda"); another raises.

        Returns:
            A list of :class:`SparseEmbedding` (one for a single text), a scipy CSR matrix, or (n, dim) /
            (dim,) float32 dense rows.

        Raises:
            ArgumentTypeError: Inputs that are not strings.
            InvalidArgumentError: An unknown prompt name, a bad number, a task that is none of the model's
                routes (or no task where the model has no default route), as sentence-transformers' Router.
        """
        inputs = one_of_inputs(inputs, sentences, "a str or an iterable of str")
        single = isinstance(inputs, str)
        texts = [inputs] if isinstance(inputs, str) else checked_texts(inputs)
        batch_size = positive_int(batch_size, "batch_size")
        check_device(device, self.provider, "SparseEncoder")
        if max_active_dims is None:
            max_active_dims = self.max_active_dims
        if max_active_dims is not None:
            max_active_dims = positive_int(max_active_dims, "max_active_dims")
        prompt_text = resolve_prompt(self.manifest.prompts, self.manifest.default_prompt_name, prompt_name, prompt)
        if self._routes_to_table(task):
            matrix = self._table_vectors(texts, prompt_text, max_active_dims)
        else:
            progress = bool(show_progress_bar)
            matrix = self._model_vectors(texts, prompt_text, batch_size, max_batch_tokens, max_active_dims, progress)
        if convert_to_csr:
            return matrix.to_scipy()
        if not convert_to_sparse_tensor:
            dense = matrix.to_dense()
            if single:
                return dense[0]
            return dense if convert_to_tensor else list(dense)
        rows = matrix.rows()
        return rows[0] if single else rows

    def encode_query(
        self,
        inputs: str | Iterable[str] | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """:meth:`encode` for queries: the "query" route, and the "query" prompt when the model has one and
        none is given (as sentence-transformers)."""
        if prompt_name is None and prompt is None and "query" in self.manifest.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name, prompt, task="query", **kwargs)

    def encode_document(
        self,
        inputs: str | Iterable[str] | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """:meth:`encode` for documents: the "document" route, and the first of the "document", "passage" and
        "corpus" prompts the model has when none is given (as sentence-transformers)."""
        if prompt_name is None and prompt is None:
            prompt_name = next((name for name in DOCUMENT_PROMPT_NAMES if name in self.manifest.prompts), None)
        return self.encode(inputs, prompt_name, prompt, task="document", **kwargs)

    def decode(self, embeddings: Any, top_k: int | None = None) -> list[Any]:
        """Each vector's active terms as ``(token, weight)`` pairs, heaviest first (ties: lower term id first).

        Args:
            embeddings: One :class:`SparseEmbedding` or a (dim,) array (-> one list), or several (a list of
                them, a SparseMatrix, scipy sparse or a (n, dim) array -> a list per vector).
            top_k: Keep the ``top_k`` heaviest terms of each.
        """
        if top_k is not None:
            top_k = positive_int(top_k, "top_k")
        one = isinstance(embeddings, SparseEmbedding) or (isinstance(embeddings, np.ndarray) and embeddings.ndim == 1)
        matrix = as_sparse_matrix(embeddings)
        decoder = self._tokenizer._tokenizer
        decoded = []
        for row in matrix.rows():
            order = np.lexsort((row.indices, -row.values))[:top_k]
            decoded.append([(decoder.id_to_token(int(row.indices[i])), float(row.values[i])) for i in order])
        return decoded[0] if one else decoded

    def similarity(self, a: Any, b: Any) -> np.ndarray:
        """The model's similarity (:attr:`similarity_fn_name`, dot unless it was saved with another) of every
        vector of ``a`` with every vector of ``b``: (len(a), len(b)) float32 (see
        :func:`onnxembed.kernels.sparse_similarity`)."""
        return sparse_similarity(a, b, self.similarity_fn_name)

    def similarity_pairwise(self, a: Any, b: Any) -> np.ndarray:
        """The model's similarity of ``a[i]`` with ``b[i]``: (n,) float32, as ``SparseEncoder.similarity_pairwise``."""
        return sparse_similarity_pairwise(a, b, self.similarity_fn_name)

    def intersection(self, a: Any, b: Any) -> Any:
        """The terms ``a`` shares with each vector of ``b``, weighted by the product of their weights, as
        ``SparseEncoder.intersection``: ``a`` one vector; ``b`` one vector (-> a SparseEmbedding) or several
        (-> a list of them). :meth:`decode` reads them."""
        first = as_sparse_matrix(a, "a")
        if len(first) != 1:
            raise InvalidArgumentError(f"a must be one vector; got {len(first)}")
        one = isinstance(b, SparseEmbedding) or getattr(b, "ndim", None) == 1  # a 1-D array or torch tensor
        second = as_sparse_matrix(b, "b")
        if first.dim != second.dim:
            raise InvalidArgumentError(f"vocabulary mismatch: a has {first.dim}, b has {second.dim}")
        query = first.row(0).to_dense()
        shared = [_times(query, row) for row in second.rows()]
        return shared[0] if one else shared

    @staticmethod
    def sparsity(embeddings: Any) -> dict[str, float]:
        """Mean active terms per vector and mean share of the vocabulary left out, as
        ``SparseEncoder.sparsity``: ``{"active_dims": float, "sparsity_ratio": float}``."""
        matrix = as_sparse_matrix(embeddings)
        if len(matrix) == 0 or matrix.dim == 0:
            return {"active_dims": 0.0, "sparsity_ratio": 1.0}
        active = np.diff(matrix.indptr).astype(np.float64)
        return {"active_dims": float(active.mean()), "sparsity_ratio": float((1 - active / matrix.dim).mean())}

    def _routes_to_table(self, task: str | None) -> bool:
        route = self.manifest.static_route
        if task is not None and not isinstance(task, str):
            raise ArgumentTypeError(f"task must be a str or None; got {type(task).__name__}")
        if route is None:  # no routes: sentence-transformers ignores the task too
            return False
        if task is None:
            if route.default is None:
                raise InvalidArgumentError(
                    f"this model has no default route; pass task= one of {', '.join(self.routes)}"
                )
            return route.default
        if task in route.tasks:
            return True
        if route.graph_tasks and task not in route.graph_tasks:
            raise InvalidArgumentError(f"no route for task {task!r}; this model's routes are {', '.join(self.routes)}")
        return False

    @property
    def routes(self) -> tuple[str, ...]:
        """An inference-free model's task names (the ``task`` values of :meth:`encode`); () without routes."""
        route = self.manifest.static_route
        return () if route is None else (*route.tasks, *route.graph_tasks)

    def _table_vectors(self, texts: list[str], prompt: str, max_active_dims: int | None) -> SparseMatrix:
        """SparseStaticEmbedding: each text's distinct tokens (no special tokens), weighted by the table."""
        assert self._static_weight is not None  # only routed here for an inference-free model
        weight = self._static_weight
        rows = []
        for encoding in self._static_tokenizer.encode([with_prompt(prompt, text) for text in texts]):
            ids = np.unique(np.asarray(encoding.ids, dtype=np.int64))
            ids = ids[ids < weight.shape[0]]
            values = weight[ids]
            keep = values != 0
            rows.append(SparseEmbedding(ids[keep], values[keep], self.dim))
        matrix = SparseMatrix.from_rows(rows, self.dim)
        if max_active_dims is not None:  # dense a block of rows at a time: a vocabulary-wide row is ~120 KB
            blocks = [
                sparse_rows(matrix[start : start + DENSE_BLOCK_ROWS].to_dense(), max_active_dims)
                for start in range(0, len(matrix), DENSE_BLOCK_ROWS)
            ]
            matrix = SparseMatrix.from_rows([row for block in blocks for row in block.rows()], self.dim)
        return matrix

    def _model_vectors(
        self,
        texts: list[str],
        prompt: str,
        batch_size: int,
        max_batch_tokens: int | None,
        max_active_dims: int | None,
        show_progress: bool,
    ) -> SparseMatrix:
        """The graph's vectors of ``texts`` in input order, as CSR rows (each batch made sparse as it comes)."""
        rows: list[SparseEmbedding | None] = [None] * len(texts)
        progress = progress_bar(len(texts), show_progress, "Encoding", "text")
        try:
            for indices, arrays in self._batches(texts, prompt, max_batch_tokens, batch_size):
                batch = sparse_rows(self._embed_batch(arrays), max_active_dims)
                for position, index in enumerate(indices.tolist()):
                    rows[index] = batch.row(position)
                if progress is not None:
                    progress.update(len(indices))
        finally:
            if progress is not None:
                progress.close()
        return SparseMatrix.from_rows(rows, self.dim)  # type: ignore[arg-type]

    def _batches(
        self, texts: Sequence[str], prompt: str = "", max_batch_tokens: int | None = None, batch_size: int | None = None
    ) -> Iterator[Batch]:
        """The batches of ``texts`` with ``prompt``: (indices into texts, padded arrays), longest first, cut by
        the token budget and run cost (batching.py). Also what the server's workers run."""
        if max_batch_tokens is None:
            max_batch_tokens = min(default_max_batch_tokens(self.provider), max(1, _LOGITS_FLOATS // self.dim))
        max_batch_tokens = positive_int(max_batch_tokens, "max_batch_tokens")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        yield from self._batcher.batches(list(texts), prompt, batch_size, max_batch_tokens)

    def _embed_batch(self, arrays: dict[str, np.ndarray], prompt: str = "") -> np.ndarray:
        """(rows, dim) float32 dense vectors of one batch from :meth:`_batches` (the name the server's batcher
        calls for every kind of model)."""
        feed = {name: arrays[name] for name in self._input_names}
        (vectors,) = self._session.run([POOLED_OUTPUT], feed)
        return np.asarray(vectors, dtype=np.float32)


def _times(dense: np.ndarray, row: SparseEmbedding) -> SparseEmbedding:
    """``row`` times a dense vector: the terms where both are non-zero."""
    values = row.values * dense[row.indices]
    keep = values != 0
    return SparseEmbedding(row.indices[keep], values[keep], row.dim)
