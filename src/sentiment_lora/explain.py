"""Why a label was given: word-level attributions, the one owner of them.

Captum's IntegratedGradients on the input embeddings attributes the *calibrated*
probability of the predicted label (softmax of the label logits over the classifier's
temperature, as ``SentimentClassifier.proba_of_prompts`` gives it) to the prompt's tokens;
sub-word tokens are then merged back into the review's words. Only the review is attributed:
the template's tokens are the same in the input and in the baseline, so they get nothing.

Faithfulness: integrated gradients satisfy completeness, sum(attributions) = f(input) -
f(baseline), up to the integral's approximation error (captum's convergence delta, measured
here from the two probabilities); an explanation whose |delta| exceeds ``tolerance`` is flagged
unfaithful and its scores are withheld, rather than shown as if they explained the probability.

Captum is imported only here, inside ``explain``, so the package imports without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError, require

N_STEPS = 16
"""Integral steps of the first try per text (Gauss-Legendre, captum's default rule, exact for
smooth paths with far fewer steps than a Riemann sum); each step costs a forward and a backward pass."""
MAX_STEPS = 64
"""Steps of the one retry when the first try's completeness error passes the tolerance: the
path between real token embeddings can wiggle at a finer scale than 16 steps see, so some texts
need more, and paying that only for them keeps the others cheap."""
INTERNAL_BATCH = 8
"""Steps run through the model at once: memory is bounded by this many prompts of at most
``prompt.max_length`` tokens, whatever the text's length."""
TOLERANCE = 0.05
"""Largest |completeness delta|, in probability, for which scores are shown: an error of 5
points out of a probability moves no word's shade visibly, a larger one might reorder words."""

_WORD = re.compile(r"\S+")


@dataclass
class Word:
    """One whitespace-separated word of the review as the model read it, and its push toward the
    predicted label (positive: toward it; in probability; None when the explanation is unfaithful)."""

    word: str
    start: int
    end: int
    score: float | None
    tokens: list[tuple[str, float | None]] = field(default_factory=list)


@dataclass
class Explanation:
    """The attributions of one text's predicted label."""

    text: str
    """The review as the model read it: cleaned and cut to the prompt's token budget."""
    label: str
    label_index: int
    labels: list[str]
    probability: float
    """The calibrated probability of ``label`` for ``text`` (the LLM's, before any stack)."""
    baseline_probability: float
    """The same probability for the baseline (``baseline_ids``)."""
    delta: float
    tolerance: float
    words: list[Word]
    n_steps: int = 0
    """The integral's steps that gave ``delta``."""

    @property
    def faithful(self) -> bool:
        return bool(abs(self.delta) <= self.tolerance)

    def to_dict(self) -> dict:
        """JSON-ready: the one shape the CLI, the server, the page and the report show."""
        return {"label": self.label, "labels": self.labels, "probability": round(self.probability, 6),
                "baseline_probability": round(self.baseline_probability, 6), "delta": round(self.delta, 6),
                "tolerance": self.tolerance, "faithful": self.faithful, "n_steps": self.n_steps, "text": self.text,
                "words": [{"word": w.word, "start": w.start, "end": w.end,
                           "score": None if w.score is None else round(w.score, 6),
                           "tokens": [[p, None if s is None else round(s, 6)] for p, s in w.tokens]}
                          for w in self.words]}


def require_captum():
    """Captum's IntegratedGradients, or the one-line error that says how to install it
    (callers check it before loading a model)."""
    return require("captum.attr", "explain", "explaining a label").IntegratedGradients


def explain(clf, texts, n_steps: int = N_STEPS, internal_batch_size: int = INTERNAL_BATCH,
            tolerance: float = TOLERANCE, max_steps: int = MAX_STEPS) -> list[Explanation]:
    """One ``Explanation`` per text, for the label ``clf`` predicts. Texts are cleaned and cut to
    the prompt's budget exactly as scoring does (``clf.encode``), so a long text costs no more
    than ``prompt.max_length`` tokens times ``internal_batch_size``."""
    if clf.method == "generate":
        raise UserError("explanations need the logits method; the generate method has no gradient to attribute")
    if clf.precision == "int8":
        raise UserError("explanations need fp32 or bf16 weights; load the classifier with --precision fp32")
    if n_steps < 1 or internal_batch_size < 1:
        raise UserError("explain: n_steps and internal_batch_size must be at least 1")
    texts = [texts] if isinstance(texts, str) else list(texts)
    ids = clf.encode(texts)
    ig = require_captum()(calibrated_forward(clf))
    llm = clf.proba_of_prompts(ids)
    targets = [clf.label_words.index(lab) for lab in clf.labels_of(clf.combine(texts, llm))]
    was_training = clf.model.training
    clf.model.eval()  # a model fresh from training: no dropout in the path's forward passes
    try:
        return [_explain_one(clf, ig, row, target, float(p[target]), (n_steps, max(n_steps, max_steps)),
                             internal_batch_size, tolerance) for row, target, p in zip(ids, targets, llm)]
    finally:
        clf.model.train(was_training)


def calibrated_forward(clf):
    """The scoring forward pass (``model.label_logits``) from a prompt's input embeddings to the
    calibrated probabilities over the label words: softmax(label logits / T) equals
    ``decision.apply_temperature`` of their softmax, as ``proba_of_prompts`` gives it."""
    import torch

    from .model import label_logits

    labels = torch.tensor(clf.prompt.label_token_ids, device=next(clf.model.parameters()).device)
    temperature = clf.temperature or 1.0

    def forward(inputs_embeds, attention_mask):
        logits = label_logits(clf.model, None, attention_mask, labels, inputs_embeds=inputs_embeds)
        return torch.softmax(logits / temperature, dim=-1)

    return forward


def baseline_ids(clf, ids: list[int], positions: list[int]) -> list[int]:
    """The prompt with each review token replaced by the pad (else EOS) token, the template kept,
    so the template's tokens get zero attribution and all of f(input) - f(baseline) lands on the
    review. The pad token's embedding rather than a zero vector: the model normalises each
    position (RMSNorm) before reading it, which maps any small nonzero vector to a full-size
    one, so the path from zero jumps right after its start and the integral does not converge
    in affordable steps; the path between two real token embeddings has no such jump."""
    tok = clf.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = list(ids)
    for i in positions:
        out[i] = pad
    return out


def path_ends(clf, ids: list[int], spans=None):
    """Integrated gradients' straight path runs between these two (1, len(ids), hidden) tensors:
    the prompt's input embeddings and its baseline's (``baseline_ids`` over the review's tokens,
    ``review_tokens``' spans unless given). Looked up once, without autograd, so that each step of
    the path costs its own forward and backward pass alone."""
    import torch

    spans = review_tokens(clf, ids)[1] if spans is None else spans
    device = next(clf.model.parameters()).device
    embed = clf.model.get_input_embeddings()
    rows = (ids, baseline_ids(clf, ids, [i for i, _, _ in spans]))
    with torch.no_grad():  # not inference_mode: its tensors could not enter autograd afterwards
        x, base = (embed(torch.tensor([row], device=device)) for row in rows)
    return x, base


def _explain_one(clf, ig, ids: list[int], target: int, p_x: float, steps: tuple[int, int], batch: int,
                 tolerance: float) -> Explanation:
    """Integrated gradients at ``steps[0]``, again at ``steps[1]`` when the first is unfaithful.
    ``p_x`` is the classifier's own calibrated probability of ``target``. The path runs between
    ``path_ends``; the completeness error, sum(attributions) - (f(x) - f(base)), takes f(base) from one forward pass
    shared by both tries."""
    import torch

    text, spans = review_tokens(clf, ids)
    x, base = path_ends(clf, ids, spans)
    ones = torch.ones((1, len(ids)), dtype=torch.long, device=x.device)
    with torch.no_grad():
        p_b = float(ig.forward_func(base, ones)[0, target])
    for n in dict.fromkeys(steps):
        attr = ig.attribute(x, baselines=base, target=target, additional_forward_args=(ones,), n_steps=n,
                            internal_batch_size=batch)
        per_token = attr.sum(-1)[0].double().cpu().numpy()
        delta = float(per_token.sum()) - (p_x - p_b)
        if abs(delta) <= tolerance:
            break
    faithful = abs(delta) <= tolerance
    words = merge_words(clf.tokenizer, ids, text, spans, per_token if faithful else None)
    return Explanation(text=text, label=clf.label_words[target], label_index=target, labels=clf.label_words,
                       probability=p_x, baseline_probability=p_b, delta=delta, tolerance=tolerance,
                       words=words, n_steps=n)


def review_tokens(clf, ids: list[int]) -> tuple[str, list[tuple[int, int, int]]]:
    """The review's text inside the prompt ``ids``, and its tokens as (position in ``ids``, start,
    end) character spans in that text. The prompt is decoded and tokenized again with offsets;
    byte-level BPE gives back the same ids, which is checked."""
    tok, lead = clf.tokenizer, len(clf.prompt.lead)
    prompt = tok.decode(ids[lead:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc.input_ids) != list(ids[lead:]):
        raise UserError("explain: this tokenizer does not give back the prompt's tokens from its text, so its "
                        "tokens cannot be mapped to words")
    head, tail = clf.prompt.cfg.template.split("{text}", 1)
    a, b = len(head), len(prompt) - len(tail)
    spans = [(lead + i, max(s, a) - a, min(e, b) - a) for i, (s, e) in enumerate(enc.offset_mapping)
             if s < b and e > a]
    return prompt[a:b], spans


def merge_words(tok, ids: list[int], text: str, spans, scores) -> list[Word]:
    """Tokens summed into the words they overlap; a token of whitespace alone joins the next word
    (BPE's 'Ġ' already puts a word's leading space in its first token)."""
    words = [Word(m.group(), m.start(), m.end(), None if scores is None else 0.0) for m in _WORD.finditer(text)]
    if not words:
        return []
    starts = [w.start for w in words]
    for pos, s, e in spans:
        k = next((j for j, w in enumerate(words) if w.start < max(e, s + 1) and w.end > s), None)
        if k is None:
            k = min(int(np.searchsorted(starts, s)), len(words) - 1)
        score = None if scores is None else float(scores[pos])
        words[k].tokens.append((tok.convert_ids_to_tokens(ids[pos]), score))
        if score is not None:
            words[k].score += score
    return words


def without_words(e: Explanation, drop) -> str:
    """``e.text`` with the words at indices ``drop`` deleted (the spaces between the rest kept)."""
    drop = set(drop)
    return " ".join(w.word for i, w in enumerate(e.words) if i not in drop)


def deletion_check(clf, e: Explanation, k: int, draws: int, rng: np.random.Generator) -> tuple[float, float] | None:
    """How far deleting words moves the calibrated probability of ``e``'s label: (drop after
    deleting the ``k`` words that pushed most toward it, mean drop over ``draws`` deletions of
    ``k`` random words). A faithful explanation's top words matter more than random ones, so the
    first should exceed the second. None for an unfaithful explanation or one of ``k`` words or fewer."""
    if not e.faithful or len(e.words) <= k:
        return None
    top = np.argsort([-w.score for w in e.words], kind="stable")[:k]
    texts = [without_words(e, top)] + [without_words(e, rng.choice(len(e.words), k, replace=False))
                                       for _ in range(draws)]
    after = clf.proba_of_prompts(clf.encode(texts))[:, e.label_index]
    drops = e.probability - after
    return float(drops[0]), float(drops[1:].mean())
