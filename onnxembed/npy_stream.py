"""Writing an .npy file row block by row block, when the number of rows is not known in advance.

The header is written with room to spare and rewritten with the final shape on close, so a corpus
larger than memory streams to disk and the result loads with ``np.load`` (or ``mmap_mode="r"``).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from onnxembed.errors import InvalidArgumentError

_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_BYTES = 128  # magic + length + dict, padded with spaces: room for any 2-D shape


class NpyWriter:
    """``with NpyWriter(path, width) as writer: writer.write(rows)`` -> an (n, width) .npy file."""

    def __init__(self, path: str | Path, width: int, dtype: np.dtype | type = np.float32) -> None:
        self.path = Path(path)
        self.width = width
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._write_header()

    def _write_header(self) -> None:
        header = repr({"descr": self.dtype.str, "fortran_order": False, "shape": (self.rows, self.width)})
        body = header.encode("latin1")
        padding = _HEADER_BYTES - len(_MAGIC) - 2 - len(body) - 1
        self._file.seek(0)
        self._file.write(
            _MAGIC + (_HEADER_BYTES - len(_MAGIC) - 2).to_bytes(2, "little") + body + b" " * padding + b"\n"
        )
        self._file.seek(0, 2)

    def write(self, block: np.ndarray) -> None:
        if block.ndim != 2 or block.shape[1] != self.width or block.dtype != self.dtype:
            raise InvalidArgumentError(
                f"expected rows of shape (k, {self.width}) {self.dtype}; got {block.shape} {block.dtype}"
            )
        self._file.write(np.ascontiguousarray(block).tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        if not self._file.closed:
            self._write_header()
            self._file.close()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
