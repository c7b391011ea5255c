import pytest

from sentiment_lora.config import PromptConfig
from sentiment_lora.errors import UserError
from sentiment_lora.prompt import Prompt

LONG = " ".join(f"w{i}" for i in range(300))


def test_label_tokens_are_distinct_and_follow_the_template(tiny_tokenizer):
    p = Prompt(tiny_tokenizer, PromptConfig())
    neg, pos = p.label_token_ids
    assert neg != pos
    # Each id is the token that follows the template in the full "...Sentiment: Word" string.
    full = tiny_tokenizer("Review: x\nSentiment: Positive", add_special_tokens=False).input_ids
    head = tiny_tokenizer("Review: x\nSentiment:", add_special_tokens=False).input_ids
    assert full[len(head)] == pos


def test_colliding_label_words_are_refused(tiny_tokenizer):
    # Both words start with the same first token in this tokenizer.
    with pytest.raises(UserError, match="both start with token"):
        Prompt(tiny_tokenizer, PromptConfig(label_words=["Positive", "Positive2"]))


def test_short_texts_are_untouched(tiny_tokenizer):
    p = Prompt(tiny_tokenizer, PromptConfig(max_length=64))
    enc = p.encode(["Great movie."])
    assert enc.truncated == 0
    assert tiny_tokenizer.decode(enc.input_ids[0], skip_special_tokens=True) == "Review: Great movie.\nSentiment:"


@pytest.mark.parametrize("mode", ["head", "tail", "head+tail"])
def test_truncation_shortens_only_the_text(tiny_tokenizer, mode):
    p = Prompt(tiny_tokenizer, PromptConfig(max_length=48, truncation=mode))
    enc = p.encode([LONG, "short one"])
    assert enc.truncated == 1
    ids = enc.input_ids[0]
    assert len(ids) <= 48
    text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert text.startswith("Review: ") and text.endswith("\nSentiment:")
    assert ("w0 " in text) == (mode != "tail")
    assert ("w299" in text) == (mode != "head")
    assert ("w150" in text) is False


def test_every_encoded_prompt_fits(tiny_tokenizer):
    p = Prompt(tiny_tokenizer, PromptConfig(max_length=32))
    texts = [("é" * n) + " terrible ñ " * n for n in range(1, 40, 3)]
    enc = p.encode(texts)
    assert max(enc.lengths) <= 32
    suffix = tiny_tokenizer("\nSentiment:", add_special_tokens=False).input_ids
    assert all(ids[-len(suffix):] == suffix for ids in enc.input_ids)


def test_max_length_too_small_for_the_template(tiny_tokenizer):
    with pytest.raises(UserError, match="prompt.max_length"):
        Prompt(tiny_tokenizer, PromptConfig(max_length=16, template="A very long template " * 5 + "{text}"))


def test_label_word_merging_with_template_is_refused(tiny_tokenizer):
    with pytest.raises(UserError, match="merges with the end of the template"):
        Prompt(tiny_tokenizer, PromptConfig(template="Review: {text}\nSentiment: "))


def test_colliding_label_words_get_single_token_suggestions(tiny_tokenizer):
    import re

    with pytest.raises(UserError) as info:
        Prompt(tiny_tokenizer, PromptConfig(label_words=["very bad", "bad", "very good"]))
    message = str(info.value)
    assert "both start with token" in message and "\n" not in message
    suggested = re.search(r"single-token words: (.*)$", message).group(1).split(", ")
    assert len(suggested) >= 2
    prompt = Prompt(tiny_tokenizer, PromptConfig(label_words=suggested))  # they work as label words together
    assert len(set(prompt.label_token_ids)) == len(suggested)


def test_the_label_word_studys_phrase_scores_match_one_sequence_at_a_time(tiny_model_dir):
    """benchmarks/sst5_label_words.py --multiword (what the README's first-token choice rests
    on) scores a phrase by the sum of its tokens' log-probabilities, batched with left padding;
    it must equal scoring each (text, phrase) alone with no padding."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from sentiment_lora.config import ModelConfig
    from sentiment_lora.model import load_tokenizer

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sst5_label_words.py"
    spec = importlib.util.spec_from_file_location("sst5_label_words", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = Prompt(tok, PromptConfig(max_length=64))
    texts = ["good", "a long and rather dull film with a bad ending", "fine acting"]
    phrases = ["very good", "bad", "not bad at all"]
    conts = [tok(" " + p, add_special_tokens=False).input_ids for p in phrases]
    assert len({len(c) for c in conts}) > 1  # phrases of different token lengths
    got = study.phrase_probs(model, prompt, tok, texts, phrases, batch_size=4, max_tokens=None)

    want = np.zeros((len(texts), len(phrases)))
    with torch.no_grad():
        for i, ids in enumerate(prompt.encode(texts).input_ids):
            for k, c in enumerate(conts):
                logp = torch.log_softmax(model(torch.tensor([ids + c])).logits[0].float(), dim=-1)
                want[i, k] = sum(float(logp[len(ids) - 1 + t, token]) for t, token in enumerate(c))
    want = np.exp(want - want.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
