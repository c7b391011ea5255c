"""Stop signals (SIGINT, SIGTERM): what every command does with them, in one place.

- Outside training, both end a command as Ctrl-C does: ``terminate_as_interrupt`` makes them
  raise ``Interrupted`` (a KeyboardInterrupt), so the same cleanup and message run.
- While training, ``StopRequest`` defers them: the step under way finishes and is saved first.
- While serving, uvicorn handles them (stop accepting, finish what is in flight), then raises the
  signal again for the handlers it found; ``served`` makes those no-ops, so a clean stop exits 0.

Signals can be caught in the main thread only; elsewhere nothing is changed.

Every handler here also records the signal, because a library can swallow the exception a
handler raises (pybind11 clears it while trying an overload and raises its own TypeError, which
names no cause). ``interrupt_in`` then still knows that the command was asked to stop.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from .errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # stop signals delivered to this command's handlers


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def exit_status(exc: BaseException | None = None) -> int:
    """128 + the stopping signal's number, as a shell reports it; a plain KeyboardInterrupt is SIGINT."""
    return 128 + int(getattr(exc, "signum", None) or signal.SIGINT)


def interrupt_in(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind ``exc``, where a library turned one into another error:
    transformers' lazy imports raise ModuleNotFoundError from whatever stopped the import, and
    pybind11 a TypeError that keeps no trace of it. An error after a stop signal is that stop:
    the user asked for it, and the outputs are written atomically either way."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return Interrupted(_received[-1]) if _received else None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _raise(signum, frame) -> None:
    _received.append(signum)
    raise Interrupted(signum)


@contextmanager
def _handling(signals: tuple[int, ...], handler) -> Iterator[None]:
    """``handler`` for ``signals`` while active, then the previous handlers again. An ignored
    signal stays ignored: a shell without job control starts background jobs so."""
    if not _main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: a handler installed from C, which Python cannot reinstall
                signal.signal(sig, old)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job scheduler, ``kill``) raises ``Interrupted`` as Ctrl-C does, while this is
    active: a command's span, so the signals it records are its own."""
    _received.clear()
    try:
        with _handling(STOP_SIGNALS, _raise):
            yield
    finally:
        _received.clear()


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
        _received.append(signum)
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum  # printed by the loop: writing from a handler can hit a write in progress

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: a handler installed from C, which Python cannot reinstall
                signal.signal(sig, handler)
