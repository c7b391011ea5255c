"""sentiment-lora: fine-tune a decoder LLM with LoRA to classify text.

Importing the package is cheap: torch, transformers and the rest load on first use of a
name that needs them (``SentimentClassifier``, ``load_config``, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "Config": "config",
    "load_config": "config",
    "UserError": "errors",
    "ClassifierSpec": "spec",
    "SentimentClassifier": "classifier",
    "load_model_with_lora": "classifier",
    "predict_sentiment": "classifier",
}
__all__ = ["ClassifierSpec", "Config", "SentimentClassifier", "UserError", "__version__", "load_config",
           "load_model_with_lora", "predict_sentiment"]

if TYPE_CHECKING:
    from .classifier import SentimentClassifier, load_model_with_lora, predict_sentiment
    from .config import Config, load_config
    from .errors import UserError
    from .spec import ClassifierSpec


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
