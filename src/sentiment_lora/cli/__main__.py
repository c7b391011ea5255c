"""``python -m sentiment_lora.cli``: the same as the ``sentiment-lora`` command."""

from . import entry

entry()
