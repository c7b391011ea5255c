"""The bag-of-words models a stack can use, by name: the names ``stack.baseline`` and
``classifier.json`` hold, what each reads, and which datasets each can serve. Kept apart from
``baseline`` (scikit-learn) so that the config and the command line know the names cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BagOfWords:
    """What a stack's bag-of-words model reads, by its name in ``stack.baseline`` (and in
    ``classifier.json``): word 1-2-gram TF-IDF, and optionally more."""

    nb: bool = False
    """Naive-Bayes log-count ratios scale the features (Wang and Manning, 2012): two classes only."""
    chars: bool = False
    """Character 2-5-grams inside word boundaries join the words: they catch misspellings,
    inflections and compounds that a word vocabulary splits or misses."""

    @property
    def name(self) -> str:
        """The model's name: in ``stack.baseline``, a baseline's ``method`` and its default folder."""
        return f"tfidf{'-nb' if self.nb else ''}{'-chars' if self.chars else ''}"


BASELINES = {m.name: m for m in (BagOfWords(), BagOfWords(nb=True), BagOfWords(nb=True, chars=True))}


def baseline_problem(name: str, classes: int) -> str | None:
    """Why the bag-of-words model ``name`` cannot serve ``classes`` classes, or None."""
    if name not in BASELINES:
        return f"{name!r} is not a bag-of-words model sentiment-lora knows; use {', '.join(BASELINES)}"
    if BASELINES[name].nb and classes != 2:
        return f"{name} is NB-weighted, which handles two classes only; use tfidf"
    return None
