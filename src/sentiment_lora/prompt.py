"""Turning texts into prompt token ids, and finding the token that stands for each label.

The classifier compares the label words' first tokens in the next-token distribution at the
prompt's end. Checked here with the real tokenizer: each label word starts with its own token,
and truncation shortens only the text, never the template.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PromptConfig
from .errors import UserError

_CUT = " ... "
# Suggested when label words collide: ordered from negative to positive, lower and title case.
_CANDIDATES = [(w, w.title()) for w in ("terrible", "awful", "horrible", "bad", "poor", "weak", "negative", "mixed",
                                         "neutral", "average", "okay", "fine", "decent", "positive", "good", "great",
                                         "excellent", "amazing", "perfect")]
_SAMPLE_TEXT = "An example review."
_SPARE = 64  # tokens kept beyond the budget at each cut, so a cut never reaches the tokens kept


@dataclass
class Encoded:
    input_ids: list[list[int]]
    truncated: int

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


class Prompt:
    def __init__(self, tokenizer, cfg: PromptConfig):
        self.tok = tokenizer
        self.cfg = cfg
        full = tokenizer("x").input_ids
        plain = tokenizer("x", add_special_tokens=False).input_ids
        # Keep the tokenizer's leading special tokens (BOS) but never a trailing EOS:
        # the label is read at the last position, which must be the template's end.
        self.lead = list(full[: len(full) - len(plain)]) if full[-len(plain):] == plain else []
        overhead = len(self.ids(cfg.template.format(text="")))
        self.budget = cfg.max_length - overhead
        if self.budget < 8:
            raise UserError(f"config: prompt.max_length={cfg.max_length} leaves {self.budget} tokens for the "
                            f"text after the template's {overhead}; raise it")
        self.label_token_ids = self._label_ids()
        longest = max(1, max(map(len, tokenizer.get_vocab()), default=1))  # characters, special tokens included
        self.char_limit: int | None = 2 * (self.budget + _SPARE) * longest
        """Characters kept from each end of a text before tokenizing (None: all). A token spans at
        most its own string's characters (x2 for a normalizer that merges characters), so the tokens
        kept are the whole text's, at a bounded cost. (Only a run of thousands of one repeated
        character, which BPE merges from its start, may tokenize differently at the cut.)"""

    def ids(self, prompt: str) -> list[int]:
        """Token ids of a whole prompt as the classifier feeds it: ``lead``, then the prompt's own tokens."""
        return self.lead + self.tok(prompt, add_special_tokens=False).input_ids

    def _label_ids(self) -> list[int]:
        """First token of each label word as it follows the template, checked for collisions."""
        prompt = self.cfg.template.format(text=_SAMPLE_TEXT)
        base = self.ids(prompt)
        sep = "" if prompt[-1].isspace() else " "
        ids = []
        for word in self.cfg.label_words:
            full = self.ids(prompt + sep + word)
            if full[: len(base)] != base or len(full) == len(base):
                raise UserError(f"label word {word!r} merges with the end of the template when tokenized; "
                                f"end prompt.template with a separator and no trailing space, e.g. 'Sentiment:'")
            ids.append(full[len(base)])
        for i, (word, tid) in enumerate(zip(self.cfg.label_words, ids)):
            if tid in ids[:i]:
                first, piece = self.cfg.label_words[ids.index(tid)], self.tok.convert_ids_to_tokens(tid)
                hint = ", ".join(self.single_token_words(prompt + sep, set(ids)))
                raise UserError(f"label words {first!r} and {word!r} both start with token {piece!r} "
                                f"(id {tid}); a class is scored by its word's first token, so choose words whose "
                                f"first tokens differ" + (f", e.g. these single-token words: {hint}" if hint else ""))
        return ids

    def single_token_words(self, prefix: str, taken: set[int], limit: int = 10) -> list[str]:
        """Sentiment and rating words this tokenizer encodes as one token after ``prefix`` (the template's
        end), other than the ``taken`` tokens; one case per word, spread from negative to positive."""
        base = self.ids(prefix.rstrip(" "))
        found, used = [], set(taken)
        for variants in _CANDIDATES:
            for word in variants:
                full = self.ids(prefix + word)
                if len(full) == len(base) + 1 and full[:len(base)] == base and full[-1] not in used:
                    found.append(word)
                    used.add(full[-1])
                    break
        if len(found) <= limit:
            return found
        return [found[round(i * (len(found) - 1) / (limit - 1))] for i in range(limit)]

    def _cut(self, ids: list[int], keep: int) -> str:
        mode, tail = self.cfg.truncation, keep // 2
        if mode == "tail":
            return self.tok.decode(ids[-keep:])
        if mode == "head" or tail == 0:
            return self.tok.decode(ids[:keep])
        return self.tok.decode(ids[: keep - tail]) + _CUT + self.tok.decode(ids[-tail:])

    def clip(self, text: str) -> str:
        """The part of ``text`` (head, tail or both) the prompt can keep, cut by characters before tokenizing."""
        n = self.char_limit
        if n is None or len(text) <= (2 * n if self.cfg.truncation == "head+tail" else n):
            return text
        if self.cfg.truncation == "head":
            return text[:n]
        if self.cfg.truncation == "tail":
            return text[-n:]
        return text[:n] + text[-n:]

    def encode(self, texts: list[str]) -> Encoded:
        if not texts:
            return Encoded([], 0)
        texts = [self.clip(t) for t in texts]
        text_ids = self.tok(list(texts), add_special_tokens=False).input_ids
        prompts = [self.cfg.template.format(text=t) for t in texts]
        out = [self.lead + ids for ids in self.tok(prompts, add_special_tokens=False).input_ids]
        truncated = 0
        for i, ids in enumerate(out):
            if len(ids) <= self.cfg.max_length:
                continue
            truncated += 1
            # Re-tokenizing the shortened text can merge or split tokens at the cut (and
            # head+tail adds a marker): shrink the kept part until the whole prompt fits.
            keep = self.budget
            while True:
                ids = self.ids(self.cfg.template.format(text=self._cut(text_ids[i], keep)))
                excess = len(ids) - self.cfg.max_length
                if excess <= 0 or keep <= 1:
                    break
                keep = max(1, keep - excess)
            out[i] = ids
        return Encoded(out, truncated)
