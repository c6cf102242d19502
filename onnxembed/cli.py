"""The ``onnxembed`` command: export, encode, info, serve, embed-corpus, rerank, tune.

Errors become one line on stderr and exit code 1 (2 for usage errors, from argparse); ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from onnxembed import cli_corpus, cli_encode, cli_export, cli_info, cli_rerank, cli_serve, cli_tune

# Each command's module adds its parser and runs it; in the order `onnxembed --help` lists them.
_COMMANDS = {
    "export": cli_export,
    "encode": cli_encode,
    "info": cli_info,
    "serve": cli_serve,
    "rerank": cli_rerank,
    "tune": cli_tune,
    "embed-corpus": cli_corpus,
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxembed", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress to stderr, and show the traceback of an error"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS.values():
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        _COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print("onnxembed: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the CLI's contract: one line, the traceback only with -v
        if args.verbose:
            traceback.print_exc()
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"onnxembed {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
