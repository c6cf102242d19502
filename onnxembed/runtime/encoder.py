"""Encoder: an exported model directory -> sentence embeddings, without torch.

In scope: validating input, prompts, sorting texts into length-homogeneous batches, running the
session, pooling and normalizing (via kernels), restoring input order.
Not in scope: building sessions (session.py), tokenizing (tokenize.py), the math (kernels/).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from onnxembed.kernels import exclude_prompt, normalize, pool, similarity
from onnxembed.manifest import Manifest, ModelLoadError
from onnxembed.runtime.session import create_session, resolve_provider
from onnxembed.runtime.tokenize import TextTokenizer

logger = logging.getLogger(__name__)

_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Encoder:
    """Encode text with a model exported by ``onnxembed export``.

    ``Encoder(path, provider="auto", threads=None, variant="fp32")``: provider is "auto", "cpu", "cuda"
    or an onnxruntime provider name; threads is the number of intra-op threads (None: onnxruntime's
    default, one per core). An Encoder is safe to share between threads.
    """

    def __init__(
        self,
        path: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        variant: str = "fp32",
    ) -> None:
        self.path = Path(path)
        self.manifest = Manifest.read(self.path)
        if variant not in self.manifest.variants:
            raise ValueError(
                f"variant {variant!r} is not in {self.path}; available: {', '.join(self.manifest.variants)}"
            )
        self.variant = variant
        self.provider = resolve_provider(provider)
        self._session = create_session(self.path / self.manifest.variants[variant].file, self.provider, threads)
        self._input_names = [graph_input.name for graph_input in self._session.get_inputs()]
        unknown = [name for name in self._input_names if name not in _KNOWN_INPUTS]
        if unknown:
            raise ModelLoadError(
                f"{self.manifest.variants[variant].file} takes inputs {unknown} that onnxembed cannot feed"
            )
        self._output_name = self.manifest.output_name
        self._tokenizer = TextTokenizer(self.path, self.manifest)

    @property
    def dim(self) -> int:
        """Length of one embedding."""
        return self.manifest.dim

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
        batch_size: int = 32,
        normalize_embeddings: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """Embed sentences: (n, dim) float32 in input order, or (dim,) for a single str.

        As sentence-transformers: ``prompt`` (a string) or ``prompt_name`` (a key of ``prompts``) is
        prepended to every text; without either the model's default prompt applies. The model's own
        Normalize module always applies; ``normalize_embeddings=True`` normalizes a model without one.
        """
        single = isinstance(sentences, str)
        texts: list[str] = [sentences] if isinstance(sentences, str) else _checked_texts(sentences)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        prompt_text = self._resolve_prompt(prompt_name, prompt)
        if prompt_text:
            texts = [prompt_text + text for text in texts]
        embeddings = np.empty((len(texts), self.dim), dtype=np.float32)
        if texts:
            prompt_length = None
            if prompt_text and not self.manifest.include_prompt:
                prompt_length = self._tokenizer.prompt_length(prompt_text)
            self._encode_into(embeddings, texts, batch_size, prompt_length, show_progress_bar)
        if normalize_embeddings and not self.manifest.normalize:
            embeddings = normalize(embeddings)
        return embeddings[0] if single else embeddings

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(n, m) similarity matrix with the model's similarity function (cosine or dot)."""
        return similarity(a, b, self.manifest.similarity_fn_name)

    def _resolve_prompt(self, prompt_name: str | None, prompt: str | None) -> str | None:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a str; got {type(prompt).__name__}")
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
        prompt_length: int | None,
        show_progress_bar: bool,
    ) -> None:
        encodings = self._tokenizer.encode(texts)
        # Longest first, so each batch pads to nearly its own length; results go back by index.
        order = np.argsort([-len(encoding.ids) for encoding in encodings], kind="stable")
        progress = _progress(len(texts), show_progress_bar)
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            arrays = self._tokenizer.pad([encodings[i] for i in indices])
            feed = {name: arrays[name] for name in self._input_names}
            (token_embeddings,) = self._session.run([self._output_name], feed)
            mask = arrays["attention_mask"]
            if prompt_length is not None:
                mask = exclude_prompt(mask, prompt_length)
            pooled = pool(token_embeddings, mask, self.manifest.pooling_modes)
            out[indices] = normalize(pooled) if self.manifest.normalize else pooled
            if progress is not None:
                progress.update(len(indices))
        if progress is not None:
            progress.close()


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
