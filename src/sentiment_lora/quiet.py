"""Keeping the libraries' chatter off the terminal, for the command line and the Python API alike.

Progress bars, start-up logs and the libraries' notes about their own deprecated internals
(a FutureWarning from transformers when peft calls an old name) hide the results a user came
for, and the user can do nothing about them. Our own warnings (``warning: ...`` lines) and any
other warning category still show; ``SENTIMENT_LORA_VERBOSE=1`` (``--verbose``) shows everything.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE = "SENTIMENT_LORA_VERBOSE"
"""Set (to anything but empty): every library speaks as it would without us."""
LIBRARY_ENV = (("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
               ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
               ("DATASETS_VERBOSITY", "error"), ("HF_HUB_VERBOSITY", "error"), ("ACCELERATE_LOG_LEVEL", "error"))
"""Read by those libraries when they are imported."""
LOGGERS = ("huggingface_hub", "torchao", "torch.utils._pytree", "torch.onnx")
"""torchao (the int8 extra), which transformers and peft import whenever it is installed, logs its
optional kernels' absence and torch's pytree deprecations on every start; torch's ONNX exporter
logs every optional operator library it lacks."""
LIBRARY_DEPRECATIONS = (FutureWarning, DeprecationWarning)


def verbose() -> bool:
    return bool(os.environ.get(VERBOSE))


def quiet_libraries() -> None:
    """Process-wide, for a command-line process: the environment the libraries read on import
    (importing them here would cost every command seconds), the loggers, and transformers'
    verbosity where it is imported already (a test, a notebook)."""
    for name, value in LIBRARY_ENV:
        os.environ.setdefault(name, value)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


@contextmanager
def quiet_loading() -> Iterator[None]:
    """For one model load from the Python API: transformers' progress bars and info logs, the
    start-up logs of LOGGERS and the libraries' deprecation warnings are off inside, and put back
    as they were after, so a program around us keeps its own settings."""
    if verbose():
        yield
        return
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), [lg.level for lg in loggers])
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in LIBRARY_DEPRECATIONS:
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        verbosity, bars, levels = saved
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
