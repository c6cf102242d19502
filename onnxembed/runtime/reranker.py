"""Reranker: an exported CrossEncoder directory -> scores of (query, document) pairs, without torch.

In scope: CrossEncoder.predict and .rank as sentence-transformers defines them (argument names, the
activation and softmax, result shapes for any num_labels, rank's sorting and refusal for num_labels != 1),
validating pairs. Not in scope: sessions (session.py), tokenizing pairs (tokenize.py), batching
(batching.py): the same pieces the Encoder runs on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from onnxembed._checks import (
    TORCH_DEVICES,
    check_device,
    model_path,
    one_of_inputs,
    positive_int,
    resolve_prompt,
    unordered_or_keyed,
)
from onnxembed.errors import ArgumentTypeError, InvalidArgumentError, ModelLoadError
from onnxembed.kernels.dense import DENSE_ACTIVATIONS, activate
from onnxembed.manifest import LOGITS_OUTPUT, RERANKER, Manifest
from onnxembed.runtime.batching import Batch, Batcher, default_max_batch_tokens
from onnxembed.runtime.pipeline import progress_bar
from onnxembed.runtime.session import open_graph, resolve_provider
from onnxembed.runtime.tokenize import TextTokenizer

Pair = tuple[str, str]
# sentence-transformers' default batch size for predict and rank.
DEFAULT_BATCH_SIZE = 32
# torch.nn activation classes -> kernels.dense names: a torch module passed as activation_fn is recognised by its
# class name (the runtime never imports torch) and run in numpy.
_TORCH_CLASSES = {
    "Identity": "identity",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "ReLU": "relu",
    "GELU": "gelu",
    "SiLU": "silu",
}


class Reranker:
    """Score (query, document) pairs with a CrossEncoder exported by ``onnxembed export``, as
    ``CrossEncoder.predict`` and ``CrossEncoder.rank`` would. Safe to share between threads.

    Args:
        model_dir: A directory written by ``onnxembed export`` from a CrossEncoder.
        provider: "auto" (CUDA when onnxruntime has it, else CPU), "cpu", "cuda" or an onnxruntime provider name.
        threads: Intra-op threads (None: onnxruntime's default, one per core).
        variant: "auto" (the fastest variant whose measured ranking accuracy the export accepted), a variant of
            the manifest ("fp32", "optimized", "int8", "fp16") or a graph file name; ``.variant`` says which.

    Raises:
        ModelLoadError: ``model_dir`` is not a complete reranker export.
        InvalidArgumentError: An unknown provider or variant.

    Example:
        >>> from onnxembed import Reranker
        >>> reranker = Reranker("out-reranker/")
        >>> best = reranker.rank("what is onnx?", ["ONNX is a model format.", "Cats sleep a lot."], top_k=1)
        >>> best
        [{'corpus_id': 0, 'score': np.float32(0.93)}]
    """

    def __init__(
        self, model_dir: str | Path, provider: str = "auto", threads: int | None = None, variant: str = "auto"
    ) -> None:
        self.model_dir = model_path(model_dir)
        self.manifest = Manifest.read(self.model_dir)
        if self.manifest.task != RERANKER:
            kind, loader = (
                ("a sparse", "SparseEncoder") if self.manifest.task == "sparse" else ("an embedding", "Encoder")
            )
            raise ModelLoadError(
                f"{self.model_dir} is {kind} model export, not a reranker; load it with onnxembed.{loader}"
            )
        self.provider = resolve_provider(provider)
        self.variant, self._session, self._input_names = open_graph(
            self.model_dir, self.manifest, variant, self.provider, threads, LOGITS_OUTPUT
        )
        if self.manifest.activation_fn not in DENSE_ACTIVATIONS:
            raise ModelLoadError(f"{self.model_dir}: activation_fn {self.manifest.activation_fn!r} is not known")
        self._tokenizer = TextTokenizer(self.model_dir, self.manifest)
        self._batcher = Batcher.for_model(self._tokenizer, self.manifest, self.provider, self.variant)

    @property
    def num_labels(self) -> int:
        """Scores per pair: 1 for a reranker, more for a classifier (e.g. 3 for NLI)."""
        return self.manifest.num_labels

    @property
    def dim(self) -> int:
        """Outputs per pair (num_labels): what the server's batcher allocates per row."""
        return self.manifest.num_labels

    @property
    def max_seq_length(self) -> int:
        """A pair is truncated (longest text first) to this many tokens, special tokens included."""
        return self.manifest.max_seq_length

    @property
    def max_length(self) -> int:
        """:attr:`max_seq_length`, by CrossEncoder's name."""
        return self.manifest.max_seq_length

    @property
    def device(self) -> str:
        """Where the provider runs, in torch's words ("cpu", "cuda"); the provider's name for others."""
        return TORCH_DEVICES.get(self.provider, self.provider)

    @property
    def activation_fn(self) -> str:
        """The activation predict applies by default: "sigmoid", "identity", ... (torch.nn's class, lowercased)."""
        return self.manifest.activation_fn

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self.manifest.prompts)

    def __repr__(self) -> str:
        return (
            f"Reranker({str(self.model_dir)!r}, provider={self.provider!r}, variant={self.variant!r}, "
            f"num_labels={self.num_labels})"
        )

    def predict(
        self,
        inputs: Sequence[str] | Iterable[Sequence[str]] | None = None,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress_bar: bool | None = None,
        activation_fn: Callable[[np.ndarray], np.ndarray] | str | None = None,
        apply_softmax: bool | None = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        max_batch_tokens: int | None = None,
        sentences: Any = None,
        activation_fct: Callable[[np.ndarray], np.ndarray] | str | None = None,
        num_workers: int | None = None,
        device: Any = None,
    ) -> np.ndarray | list[np.ndarray]:
        """Score pairs as ``CrossEncoder.predict`` does.

        The activation (``activation_fn``, else the model's: Sigmoid for one label, Identity otherwise, unless
        the model saved another) is applied to the logits, then softmax over the labels with ``apply_softmax``.

        Args:
            inputs: One (query, document) pair, or an iterable of pairs (lists or tuples of two strings).
                ``sentences=`` is accepted too, as in sentence-transformers before 5.x.
            prompt_name: A key of :attr:`prompts`; the prompt goes before each pair's first text.
            prompt: A prompt string; wins over ``prompt_name``.
            batch_size: Pairs per batch at most.
            show_progress_bar: Show a tqdm progress bar.
            activation_fn: A name ("sigmoid", "identity", "tanh", "relu", "gelu", "silu"), a torch.nn activation
                of those classes, or a function of a (pairs, num_labels) float32 array.
            apply_softmax: Softmax over each pair's labels after the activation (models with num_labels > 1; as
                sentence-transformers documents it and 6.x does, where 5.x turned one label's scores into 1.0).
            convert_to_numpy: One array (True) or a list of one array per pair (False).
            convert_to_tensor: Not supported (the runtime has no torch); raises.
            max_batch_tokens: Padded tokens per batch at most (default: the Encoder's for the provider).
            sentences: The older name of ``inputs``.
            activation_fct: The older name of ``activation_fn`` (sentence-transformers before 4.x).
            num_workers: Accepted and ignored, as sentence-transformers does (with a warning).
            device: None, or the device this Reranker's provider runs on ("cpu", "cuda"); another raises.

        Returns:
            ``(n,)`` float32 for one label, ``(n, num_labels)`` otherwise; for a single pair a scalar or
            ``(num_labels,)``.

        Raises:
            ArgumentTypeError: A pair that is not two strings.
            InvalidArgumentError: An unknown prompt name or activation, a bad number, convert_to_tensor.
        """
        inputs = one_of_inputs(inputs, sentences, "a (query, document) pair or a list of pairs")
        activation_fn = _renamed_options(activation_fn, activation_fct, num_workers)
        single = _is_single_pair(inputs)
        pairs = _checked_pairs([inputs] if single else inputs)
        batch_size = positive_int(batch_size, "batch_size")
        check_device(device, self.provider, "Reranker")
        if convert_to_tensor:
            raise InvalidArgumentError("convert_to_tensor=True needs torch; the onnxembed runtime returns numpy arrays")
        activation = self._activation(activation_fn)
        prompt_text = resolve_prompt(self.manifest.prompts, self.manifest.default_prompt_name, prompt_name, prompt)
        logits = self._logits(pairs, prompt_text, batch_size, max_batch_tokens, bool(show_progress_bar))
        scores = _finish(logits, activation, bool(apply_softmax), self.num_labels)
        if not pairs:  # sentence-transformers gives an empty (0,) array whatever num_labels is
            scores = np.empty(0, dtype=np.float32)
        if not convert_to_numpy:
            result: np.ndarray | list[np.ndarray] = list(scores)
            return result[0] if single else result  # type: ignore[return-value]
        return scores[0] if single else scores

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress_bar: bool | None = None,
        activation_fn: Callable[[np.ndarray], np.ndarray] | str | None = None,
        apply_softmax: bool | None = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        max_batch_tokens: int | None = None,
        activation_fct: Callable[[np.ndarray], np.ndarray] | str | None = None,
        num_workers: int | None = None,
        device: Any = None,
    ) -> list[dict[str, Any]]:
        """Score ``documents`` against ``query`` and sort them, as ``CrossEncoder.rank`` does.

        Args:
            query: The query.
            documents: The documents (strings).
            top_k: Keep the best ``top_k`` (None: all).
            return_documents: Add each document's text under "text".
            prompt_name: As in :meth:`predict`.
            prompt: As in :meth:`predict`.
            batch_size: As in :meth:`predict`.
            show_progress_bar: As in :meth:`predict`.
            activation_fn: As in :meth:`predict`.
            apply_softmax: As in :meth:`predict`.
            convert_to_numpy: As in :meth:`predict`.
            convert_to_tensor: As in :meth:`predict` (refused).
            max_batch_tokens: As in :meth:`predict`.
            activation_fct: As in :meth:`predict`.
            num_workers: As in :meth:`predict` (ignored).
            device: As in :meth:`predict`.

        Returns:
            ``[{"corpus_id": i, "score": float, "text": ...}, ...]`` best first (ties keep input order); the
            scores are Python floats, as sentence-transformers 6 gives them (JSON-serializable).

        Raises:
            InvalidArgumentError: The model has num_labels != 1 (as sentence-transformers).
        """
        if self.num_labels != 1:
            raise InvalidArgumentError(
                f"rank() only works for models with num_labels=1; this one has {self.num_labels}. Use predict() "
                "with (query, document) pairs instead."
            )
        if not isinstance(query, str):
            raise ArgumentTypeError(f"query must be a str; got {type(query).__name__}")
        if isinstance(documents, (str, bytes)) or not isinstance(documents, Iterable):
            raise ArgumentTypeError(f"documents must be a list of str; got {type(documents).__name__}")
        unordered_or_keyed(documents, "documents")
        documents = list(documents)
        for index, document in enumerate(documents):
            if not isinstance(document, str):
                raise ArgumentTypeError(f"documents[{index}] is {type(document).__name__}, not str")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))):
            raise ArgumentTypeError(f"top_k must be an int or None; got {type(top_k).__name__} {top_k!r}")
        activation_fn = _renamed_options(activation_fn, activation_fct, num_workers)
        scores = self.predict(
            [(query, document) for document in documents],
            prompt_name=prompt_name,
            prompt=prompt,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            activation_fn=activation_fn,
            apply_softmax=apply_softmax,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
            max_batch_tokens=max_batch_tokens,
            device=device,
        )
        results: list[dict[str, Any]] = []
        for index, score in enumerate(scores):
            results.append({"corpus_id": index, "score": float(score)})
            if return_documents:
                results[-1]["text"] = documents[index]
        results.sort(key=lambda result: result["score"], reverse=True)  # stable, as sentence-transformers' sorted
        if top_k is not None:
            top_k = int(top_k)
        return results[:top_k]

    def _activation(self, activation_fn: Any) -> Callable[[np.ndarray], np.ndarray]:
        """The activation as a function of (pairs, num_labels) float32 logits."""
        if activation_fn is None:
            activation_fn = self.manifest.activation_fn
        if isinstance(activation_fn, str):
            name = activation_fn.lower()
            if name not in DENSE_ACTIVATIONS:
                raise InvalidArgumentError(
                    f"activation_fn {activation_fn!r} is not supported; choose from {', '.join(DENSE_ACTIVATIONS)}"
                )
            return lambda logits: activate(logits, name)
        kind = type(activation_fn)
        # matched by class; GELU's approximate is the one setting among _TORCH_CLASSES that changes the function
        exact = getattr(activation_fn, "approximate", "none") == "none"
        if kind.__module__.startswith("torch.nn") and kind.__name__ in _TORCH_CLASSES and exact:
            name = _TORCH_CLASSES[kind.__name__]
            return lambda logits: activate(logits, name)
        if not callable(activation_fn):
            raise ArgumentTypeError(f"activation_fn must be a name or a callable; got {type(activation_fn).__name__}")
        if _from_torch(activation_fn):
            # another torch module (Softmax(dim=1), LogSoftmax...) or function (torch.sigmoid): torch is
            # loaded already, since the caller made it; it gets a tensor, as in sentence-transformers
            return partial(_through_torch, activation_fn)
        return partial(_through_numpy, activation_fn)

    def _logits(
        self, pairs: list[Pair], prompt: str, batch_size: int, max_batch_tokens: int | None, show_progress: bool
    ) -> np.ndarray:
        """(len(pairs), num_labels) float32 logits in input order, batches cut as the Encoder cuts them."""
        out = np.empty((len(pairs), self.num_labels), dtype=np.float32)
        progress = progress_bar(len(pairs), show_progress, "Scoring", "pair")
        try:
            for indices, arrays in self._batches(pairs, prompt, max_batch_tokens, batch_size):
                out[indices] = self._embed_batch(arrays)
                if progress is not None:
                    progress.update(len(indices))
        finally:
            if progress is not None:
                progress.close()
        return out

    def _batches(
        self, pairs: list[Pair], prompt: str = "", max_batch_tokens: int | None = None, batch_size: int | None = None
    ) -> Iterator[Batch]:
        """The batches of ``pairs`` with ``prompt``: (indices into pairs, padded arrays), longest first, cut by
        the token budget and run cost (batching.py). Also what the server's workers run."""
        if max_batch_tokens is None:
            max_batch_tokens = default_max_batch_tokens(self.provider)
        max_batch_tokens = positive_int(max_batch_tokens, "max_batch_tokens")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        yield from self._batcher.batches(list(pairs), prompt, batch_size, max_batch_tokens)

    def _embed_batch(self, arrays: dict[str, np.ndarray], prompt: str = "") -> np.ndarray:
        """(rows, num_labels) float32 logits of one batch from :meth:`_batches` (the name the server's batcher
        calls for either kind of model)."""
        feed = {name: arrays[name] for name in self._input_names}
        (logits,) = self._session.run([LOGITS_OUTPUT], feed)
        return np.asarray(logits, dtype=np.float32).reshape(len(arrays["input_ids"]), self.num_labels)


def _finish(logits: np.ndarray, activation: Callable[[np.ndarray], np.ndarray], softmax: bool, labels: int) -> Any:
    """CrossEncoder.predict's steps after the model: activation, (n, 1) -> (n,), softmax over labels."""
    scores = activation(logits)
    if labels == 1 and scores.ndim > 1:
        scores = scores[:, 0]
    # softmax only over more than one label, as documented and as 6.x does (5.x softmaxed one label to 1.0)
    if softmax and scores.ndim > 1:
        wide = scores.astype(np.float64)
        wide = np.exp(wide - wide.max(axis=1, keepdims=True))
        scores = (wide / wide.sum(axis=1, keepdims=True)).astype(np.float32)
    return np.asarray(scores, dtype=np.float32)


def _from_torch(function: Any) -> bool:
    """A torch.nn module or a function of torch's (torch.sigmoid, torch.nn.functional.softmax)."""
    owner = getattr(function, "__module__", None) or ""
    return type(function).__module__.startswith("torch") or owner == "torch" or owner.startswith("torch.")


def _through_torch(function: Any, logits: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        result = function(torch.from_numpy(logits))
    return np.asarray(result.detach().cpu().float().numpy(), dtype=np.float32)


def _through_numpy(function: Any, logits: np.ndarray) -> np.ndarray:
    try:
        result = function(logits)
    except (TypeError, AttributeError) as error:
        raise ArgumentTypeError(
            f"activation_fn failed on the logits: {type(error).__name__}: {error}. It is given a (pairs, "
            "num_labels) float32 numpy array (a torch.nn module or torch function is given a tensor)"
        ) from error
    return np.asarray(result, dtype=np.float32)


def _is_single_pair(inputs: Any) -> bool:
    """sentence-transformers' rule: a list or tuple whose first element is not itself a list or tuple is one
    pair; an empty list is an empty batch."""
    if isinstance(inputs, np.ndarray):
        return inputs.size > 0 and inputs.ndim < 2
    if isinstance(inputs, (list, tuple)):
        return len(inputs) > 0 and not isinstance(inputs[0], (list, tuple))
    return False


def _renamed_options(activation_fn: Any, activation_fct: Any, num_workers: int | None) -> Any:
    """sentence-transformers' older names: ``activation_fct`` for ``activation_fn``; ``num_workers`` ignored."""
    if num_workers is not None:
        warnings.warn("num_workers is ignored: batches are planned by tokens and run by onnxruntime", stacklevel=3)
    if activation_fct is None:
        return activation_fn
    if activation_fn is not None:
        raise InvalidArgumentError("give activation_fn or its older name activation_fct, not both")
    return activation_fct


def _checked_pairs(inputs: Any) -> list[Pair]:
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise ArgumentTypeError(f"inputs must be a list of (query, document) pairs; got {type(inputs).__name__}")
    unordered_or_keyed(inputs, "inputs")
    pairs = []
    for index, pair in enumerate(inputs.tolist() if isinstance(inputs, np.ndarray) else inputs):
        if isinstance(pair, np.ndarray):  # one pair given as a 1-D array of two strings
            pair = pair.tolist()
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ArgumentTypeError(
                f"inputs[{index}] must be a (query, document) pair of two strings; got {pair!r:.80}"
            )
        if not all(isinstance(text, str) for text in pair):
            kinds = ", ".join(type(text).__name__ for text in pair)
            raise ArgumentTypeError(f"inputs[{index}] must hold two strings; got ({kinds})")
        pairs.append((pair[0], pair[1]))
    return pairs
