"""Stop signals (SIGINT, SIGTERM): what every command does with them, in one place.

- Outside training, both end a command as Ctrl-C does: ``terminate_as_interrupt`` makes SIGTERM
  raise ``Interrupted`` (a KeyboardInterrupt), so the same cleanup and message run.
- While training, ``StopRequest`` defers them: the step under way finishes and is saved first.
- While serving, uvicorn handles them (stop accepting, finish what is in flight), then raises the
  signal again for the handlers it found; ``served`` makes those no-ops, so a clean stop exits 0.

Signals can be caught in the main thread only; elsewhere nothing is changed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from .errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def exit_status(exc: BaseException | None = None) -> int:
    """128 + the stopping signal's number, as a shell reports it; a plain KeyboardInterrupt is SIGINT."""
    return 128 + int(getattr(exc, "signum", None) or signal.SIGINT)


def interrupt_in(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind ``exc``, where a library turned one into another error:
    transformers' lazy imports raise ModuleNotFoundError from whatever stopped the import."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _raise(signum, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def _handling(signals: tuple[int, ...], handler) -> Iterator[None]:
    """``handler`` for ``signals`` while active, then the previous handlers again."""
    if not _main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def terminate_as_interrupt() -> AbstractContextManager[None]:
    """SIGTERM (a job scheduler, ``kill``) raises ``Interrupted`` while this is active."""
    return _handling((signal.SIGTERM,), _raise)


def served() -> AbstractContextManager[None]:
    """Run a server that handles SIGINT and SIGTERM itself; the handlers it calls afterwards do nothing."""
    return _handling(STOP_SIGNALS, lambda *_: None)


class StopRequest:
    """SIGINT and SIGTERM ask for a stop: ``signum`` says which came, the loop finishes its step,
    saves it and raises ``Interrupted``. A second signal stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self.told = False
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if _main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal stays ignored
                    self._previous[sig] = signal.signal(sig, self._ask)
        return self

    def _ask(self, signum, frame) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum  # printed by the loop: writing from a handler can hit a write in progress

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: a handler installed from C, which Python cannot reinstall
                signal.signal(sig, handler)
