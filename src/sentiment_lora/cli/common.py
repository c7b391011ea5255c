"""What the verbs' command lines share: the parser class, the help format, argument groups
repeated across verbs, and small helpers for printing."""

from __future__ import annotations

import argparse
import math

from ..errors import UserError, printable
from ..storage import MAX_LINE_BYTES

DTYPES = ["auto", "float32", "bfloat16", "float16"]
usage = UserError  # a command line that cannot work as given: one line, exit status 2


def format_metric(x) -> str:
    """A metric for printing; undefined ones (ROC-AUC with one class present, NaN) print as n/a."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error, instead of usage + error
        self.exit(2, f"error: {printable(message)} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each option's default where it has one (not for flags, or an unset option
    whose help says what it falls back to); the example below it keeps its lines."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def flags(default) -> argparse.ArgumentParser:
    """--verbose and --debug; a verb's copy leaves them unset unless given (SUPPRESS), so that
    ``sentiment-lora --debug VERB`` is not undone by the verb's own default."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=default,
                        help="show the libraries' progress bars and warnings")
    common.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of an unexpected error")
    return common


def add_verb(sub, name: str, parents: list, help: str, run, example: str = "") -> argparse.ArgumentParser:
    """A verb's parser: ``help`` is its one-line description, ``example`` a command shown below the options."""
    epilog = f"example:\n  {example}" if example else None
    p = sub.add_parser(name, parents=parents, help=help, description=help, epilog=epilog,
                       formatter_class=HelpFormatter)
    p.set_defaults(func=run)
    return p


def add_run_dir(p: argparse.ArgumentParser) -> None:
    """The classifier folder a verb works on."""
    p.add_argument("run_dir", help="a classifier folder: the --output-dir of a finished 'sentiment-lora train', or "
                   "a folder written by 'sentiment-lora export'")


def add_runtime(p: argparse.ArgumentParser, batch: bool = True, dtype: bool = True) -> None:
    """Where and how the model runs: --batch-size, --device, --dtype, --precision."""
    if batch:
        p.add_argument("--batch-size", type=positive_int, help="most texts per model call (default: the classifier's "
                       "eval batch size)")
    p.add_argument("--device", default="auto", help="where the model runs: auto, cpu, cuda, cuda:N or mps")
    if dtype:
        p.add_argument("--dtype", choices=DTYPES, default="auto",
                       help="weights dtype as loaded (auto: fp32 on CPU, where --precision chooses)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"],
                   help="CPU scoring precision; auto: this processor's default (default: the one the classifier "
                        "was calibrated in, where this CPU has its units, else fp32)")


def add_config(p: argparse.ArgumentParser, config_help: str, set_help: str) -> None:
    """--config (a YAML preset) and --set KEY=VALUE overrides."""
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def add_input(p: argparse.ArgumentParser) -> None:
    """What to read texts from: --file, its text and id fields, how much at a time."""
    p.add_argument("--file", help="texts to classify: .txt (one per line), .jsonl, .csv or .parquet, read as a stream")
    p.add_argument("--field", default="text", help="field or column holding the text in .jsonl/.csv/.parquet")
    p.add_argument("--id-field", help="field or column copied to each output line as its id (with --file; the first "
                   "column of the tab-separated output)")
    p.add_argument("--chunk-size", type=positive_int, help="texts read and scored at a time (default: 1024; with "
                   "--engine ray, rows per Ray Data batch, 64)")
    p.add_argument("--max-line-bytes", type=positive_int, default=MAX_LINE_BYTES,
                   help="a longer line (or text) is not read: its row gets an error instead")
