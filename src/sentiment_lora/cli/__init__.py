"""``sentiment-lora``: one small module per verb (its arguments, and a function calling the package);
this one assembles them, keeps libraries quiet, and turns every end of a verb into one line and a status."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from ..errors import UserError, printable
from ..quiet import VERBOSE, quiet_libraries
from ..signals import exit_status, interrupt_in, terminate_as_interrupt
from . import baseline, evaluate, export, predict, report, serve, stack, train
from .common import Parser, flags, format_metric

__all__ = ["build_parser", "entry", "format_metric", "main"]
VERBS = (train, evaluate, predict, export, serve, report, stack, baseline)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sentiment-lora", parents=[flags(False)], description="Fine-tune a decoder LLM with LoRA "
                    "to classify text, evaluate it, and predict with it.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = flags(argparse.SUPPRESS)
    for verb in VERBS:
        verb.add(sub, [common])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling `texts` at the first option: `predict RUN --json "text"` leaves "text" over.
    if extra and args.command == "predict" and not any(e.startswith("-") for e in extra):
        args.texts = [*args.texts, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    with _verbosity(args.verbose or args.debug), terminate_as_interrupt():
        return _run(args)


def _quiet() -> None:
    """Library chatter hides the figures users came for and would make an error more than one
    line; --verbose brings it back. A command's process hides every warning, the Python API only
    the libraries' own (quiet.quiet_loading)."""
    warnings.filterwarnings("ignore")
    quiet_libraries()


@contextmanager
def _verbosity(verbose: bool) -> Iterator[None]:
    """Libraries quiet unless asked; SENTIMENT_LORA_VERBOSE carries the choice to cluster.quiet_ray,
    for this call only (a test, a notebook calls again)."""
    saved = os.environ.get(VERBOSE)
    if verbose:
        os.environ[VERBOSE] = "1"
    elif not saved:
        _quiet()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(VERBOSE, None)
        else:
            os.environ[VERBOSE] = saved


def _run(args) -> int:
    """The verb, with every way it can end turned into one line and an exit status."""
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # a reader that stopped early (| head): entry's to handle, not an error
        raise
    except KeyboardInterrupt as exc:  # each verb writes its outputs atomically, so an interrupt leaves none half-done
        print("interrupted before anything was written; run the same command again", file=sys.stderr)
        return exit_status(exc)
    except OSError as exc:  # a file that vanished, a full disk, a permission: one line, not a traceback
        if args.debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {printable(str(exc.strerror or exc))}{printable(where)}; check the path, its permissions "
              f"and free space", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: say so, and how to see more
        if args.debug:  # also an error met while stopping: it may be a bug of its own
            raise
        stop = interrupt_in(exc)
        if stop is not None:  # a stop signal that a library turned into its own error
            print("interrupted before anything was written; run the same command again", file=sys.stderr)
            return exit_status(stop)
        first = (str(exc).splitlines() or [""])[0][:200]
        print(f"internal error: {type(exc).__name__}: {printable(first)}; rerun with --debug and report it",
              file=sys.stderr)
        return 1


def entry() -> None:
    """The console script: ``main``, then exit with its status."""
    try:
        code = main()
        sys.stdout.flush()  # inside the try: the last buffered line can meet the closed pipe too
    except BrokenPipeError:
        _stdout_closed()
    if code in (130, 143):
        # After a handled Ctrl-C, CPython can re-raise SIGINT on its way out, turning 143 into a
        # SIGINT death; the files are closed and written atomically, so leave with our status.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left


def _stdout_closed() -> NoReturn:
    """The reader of standard output has gone (``| head -1``): not an error, nothing more to say.
    Python's own recipe: point stdout at devnull so the exit's flush does not fail again, then leave."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(SIGPIPE_STATUS)
