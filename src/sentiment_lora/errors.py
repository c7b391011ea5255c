"""The one exception type for mistakes a user can fix (bad path, bad value, bad file, a missing
optional dependency), and how any message is made safe to print as one line."""

import re

# Control characters, DEL and C1 controls, line/paragraph separators, bidi overrides: any of
# them in a message would split it, or let a file name or a review rewrite the terminal.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class UserError(Exception):
    """Reported by the CLI as one line on stderr with exit code 2, without a traceback."""


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM) a long step finished first; ``signum`` says which, for the exit status."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def require(module: str, extra: str, who: str):
    """``module``, imported; where it is missing, the one line naming the extra that installs it
    (an optional feature's dependency is checked before any heavy work)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise UserError(f"{who} needs {package}: pip install 'sentiment-lora[{extra}]'") from None


def printable(text: str) -> str:
    """``text`` as one line that is safe on a terminal: newlines and tabs become spaces, other
    unsafe characters are shown escaped (``\\x1b``), lone surrogates too."""
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    text = _UNSAFE.sub(lambda m: ascii(m.group())[1:-1], text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def brief(value) -> str:
    """A value as it reads in a message: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
