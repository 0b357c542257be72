"""The ``n2x`` command: train, denoise, probe, demo, info.

A thin front door over :mod:`n2x.api`: it parses arguments (the training flags are generated from the option
declarations), shows progress with tqdm, prints engine warnings on stderr and turns every
:class:`~n2x.errors.N2xError` into one line on stderr, its hint worded as flags, with exit code 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any, Callable, Sequence

from .._version import __version__
from ..errors import N2xError, N2xWarning
from .progress import EXIT_ERROR, EXIT_INTERRUPTED


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as one line on stderr with exit code 2, like the engine's errors.

    ``fill``: a function adding the parser's arguments, called only when this (sub-)command is parsed or its help is
    shown. ``n2x --help`` and ``n2x info`` then never build ``n2x train``'s flags, which come from the methods'
    declarations and so load torch.
    """

    def __init__(self, *args: Any, fill: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._fill = fill

    def filled(self) -> "OneLineParser":
        """This parser with its arguments added (once)."""
        fill, self._fill = self._fill, None
        if fill is not None:
            fill(self)
        return self

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # noqa: D102 - argparse's
        return super(OneLineParser, self.filled()).parse_known_args(args, namespace)

    def format_help(self) -> str:  # noqa: D102 - argparse's
        return super(OneLineParser, self.filled()).format_help()

    def error(self, message: str) -> Any:
        self.exit(EXIT_ERROR, f"n2x: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .denoise import add_denoise_parser
    from .export import add_export_parser
    from .tools import add_tool_parsers
    from .train import add_train_parser

    parser = OneLineParser(prog="n2x", description="Self-supervised denoising of microscopy images.")
    parser.add_argument("--version", action="version", version=f"napari-n2x {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_train_parser(sub)
    add_denoise_parser(sub)
    add_tool_parsers(sub)
    add_export_parser(sub)
    return parser


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    if issubclass(category, N2xWarning):
        print(f"n2x: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    from .flags import cli_words

    parser = build_parser()
    args = parser.parse_args(argv)
    args.words = cli_words(parser)  # for the commands that word hints themselves (batch failures)
    with warnings.catch_warnings():
        warnings.simplefilter("always", N2xWarning)
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except N2xError as exc:
            print(f"n2x: error: {exc.render(args.words)}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("n2x: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # the output went to a pipe that closed early (``n2x info m.n2x | head``)
            return 0
        except MemoryError:
            print("n2x: error: out of memory; use a smaller --tile or --batch, or --max-memory", file=sys.stderr)
            return EXIT_ERROR
        except OSError as exc:
            from .. import api

            print(f"n2x: error: {api.os_error_text(exc)}", file=sys.stderr)
            return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
