"""``onnxembed encode``: one text per line into an .npy file, streamed. Kept apart from cli.py, which parses
the command line and runs the command named.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from onnxembed.errors import InvalidArgumentError


def add_parser(commands: Any) -> None:
    encode = commands.add_parser("encode", help="embed one text per line into an .npy file")
    encode.add_argument("model_dir", help="directory written by `onnxembed export`")
    encode.add_argument("input", nargs="?", default="-", help="text file, one text per line (default: stdin)")
    encode.add_argument("-o", "--output", required=True, help=".npy file to write, (n, dim) float32")
    encode.add_argument(
        "--batch-size", type=int, help="texts per batch at most (default: 32 on CPU, the token budget on GPU)"
    )
    encode.add_argument("--prompt-name", help="one of the model's prompts")
    encode.add_argument("--prompt", help="a prompt string to prepend to every text")
    encode.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    encode.add_argument(
        "--precision", choices=("float32", "binary", "ubinary"), default="float32", help="packed bits for (u)binary"
    )
    encode.add_argument("--provider", default="auto", help="auto, cpu, cuda or an onnxruntime provider name")
    encode.add_argument("--threads", type=int, help="intra-op threads (default: one per core)")
    encode.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def read_lines(stream: BinaryIO | TextIO, name: str) -> Iterator[str]:
    """Lines as embed-corpus reads them: ended by "\n" only (a lone "\r" stays inside its line), UTF-8, the
    first without a byte order mark; a line that is not UTF-8 is an error naming ``name`` and the line."""
    for number, line in enumerate(stream, 1):
        try:
            text: str = line.decode("utf-8") if isinstance(line, bytes) else str(line)
        except UnicodeDecodeError as error:
            raise InvalidArgumentError(
                f"{name} line {number} is not UTF-8 (byte {error.start}: {error.reason})"
            ) from None
        yield (text.removeprefix("\ufeff") if number == 1 else text).rstrip("\r\n")


def _is_the_input(output: Path, source: str) -> bool:
    """Whether writing ``output`` would replace the input (a file, or what stdin reads). The .npy replaces
    ``output`` by a rename: a symbolic link there is replaced itself, its target is untouched."""
    if not output.exists() or output.is_symlink():
        return False
    try:
        read = os.fstat(sys.stdin.fileno()) if source == "-" else os.stat(source)
    except (OSError, ValueError, AttributeError):  # stdin closed or replaced by an object with no descriptor
        return False
    written = output.stat()
    return (read.st_dev, read.st_ino) == (written.st_dev, written.st_ino)


def _count_lines(path: str) -> int:
    with open(path, "rb") as stream:
        return sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))


def run(args: argparse.Namespace) -> None:
    """Stream lines through Encoder.encode_iter into the .npy file: memory stays flat for any corpus.
    The file appears only when complete (written beside it first)."""
    from tqdm.auto import tqdm

    from onnxembed.npy_stream import NpyWriter
    from onnxembed.runtime import Encoder

    output = Path(args.output)
    # checked before any text is encoded: a bad path would otherwise surface only at the first write
    if output.is_dir():
        raise InvalidArgumentError(f"--output {output} is a directory; name the .npy file to write")
    if not output.parent.is_dir():
        raise InvalidArgumentError(f"--output {output}: the folder {output.parent} does not exist")
    if args.input != "-" and (not Path(args.input).exists() or Path(args.input).is_dir()):
        raise InvalidArgumentError(f"input {args.input} is not a file (give a text file, or - for stdin)")
    if _is_the_input(output, args.input):
        raise InvalidArgumentError(f"--output {output} is the input file; it would be overwritten")
    encoder = Encoder(args.model_dir, provider=args.provider, threads=args.threads)
    # Bytes, split at "\n" only, as _count_lines and embed-corpus count lines: text mode's universal newlines
    # would also end one at a lone "\r" and give more rows than lines. A stdin with no bytes under it (replaced
    # in-process by a text stream) is read as text.
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    stream: BinaryIO | TextIO = stdin if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
    # a pipe (/dev/stdin, <(...)) is read once: only a regular file is counted ahead for the progress bar
    total = _count_lines(args.input) if args.input != "-" and Path(args.input).is_file() else None
    partial = output.with_name(output.name + ".partial")
    try:
        blocks = encoder.encode_iter(
            read_lines(stream, "standard input" if args.input == "-" else args.input),
            batch_size=args.batch_size,
            prompt_name=args.prompt_name,
            prompt=args.prompt,
            normalize_embeddings=args.normalize,
            precision=args.precision,
        )
        packed = args.precision != "float32"
        width = -(-encoder.dim // 8) if packed else encoder.dim
        dtype = {"float32": np.float32, "binary": np.int8, "ubinary": np.uint8}[args.precision]
        with (
            tqdm(total=total, desc="Encoding", unit="text", disable=not args.progress) as progress,
            NpyWriter(partial, width, dtype) as writer,
        ):
            for block in blocks:
                writer.write(block)
                progress.update(len(block))
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
        if args.input != "-":
            stream.close()
    print(f"wrote {output}: {writer.rows} x {width} {np.dtype(dtype).name}", file=sys.stderr)
