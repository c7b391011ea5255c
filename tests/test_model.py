import numpy as np
import pytest
import torch

from sentiment_lora.config import ModelConfig, PromptConfig
from sentiment_lora.errors import UserError
from sentiment_lora.model import (
    collate,
    label_logits,
    load_base_model,
    load_tokenizer,
    pick_device,
    pick_dtype,
    resolve_path,
)
from sentiment_lora.prompt import Prompt
from sentiment_lora.scoring import score


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), device="cpu")
    tok = load_tokenizer(cfg)
    model = load_base_model(cfg, torch.device("cpu"), torch.float32, tok.pad_token_id)
    return tok, model.eval()


def test_tokenizer_gets_a_pad_token_and_left_padding(tiny):
    tok, _ = tiny
    assert tok.pad_token is not None and tok.padding_side == "left"


def test_batched_scoring_equals_one_at_a_time(tiny):
    """Left padding and position ids must make a review's score independent of its batch."""
    tok, model = tiny
    prompt = Prompt(tok, PromptConfig(max_length=64))
    texts = ["Great.", "The plot was a dull mess and the acting awful, boring and terrible.", "Loved it, superb"]
    ids = prompt.encode(texts).input_ids
    batched = score(model, ids, prompt.label_token_ids, tok.pad_token_id, batch_size=3)
    single = np.concatenate([score(model, [x], prompt.label_token_ids, tok.pad_token_id, 1) for x in ids])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert np.allclose(batched.sum(axis=1), 1.0)


def test_last_position_logits_match_a_full_forward_pass(tiny):
    tok, model = tiny
    prompt = Prompt(tok, PromptConfig(max_length=64))
    ids = prompt.encode(["a fine film"]).input_ids
    batch = collate(ids, tok.pad_token_id, torch.device("cpu"))
    labels = torch.tensor(prompt.label_token_ids)
    with torch.no_grad():
        ours = label_logits(model, batch["input_ids"], batch["attention_mask"], labels)
        full = model(**batch).logits[:, -1, labels]
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", [False, True])
def test_scoring_path_matches_the_training_forward(tiny_model_dir, head):
    """Scoring multiplies the last hidden state by the label rows alone; training runs the model's
    forward. Both give the same logits, with the base LM head or a trained label head."""
    from sentiment_lora.model import add_label_head

    cfg = ModelConfig(name_or_path=str(tiny_model_dir), device="cpu")
    tok = load_tokenizer(cfg)
    model = load_base_model(cfg, torch.device("cpu"), torch.float32, tok.pad_token_id).eval()
    prompt = Prompt(tok, PromptConfig(max_length=64))
    if head:
        rows = torch.randn(len(prompt.label_token_ids), model.config.hidden_size)
        add_label_head(model, prompt.label_token_ids, rows)
    batch = collate(prompt.encode(["a fine film", "dull and long, a waste"]).input_ids, tok.pad_token_id,
                    torch.device("cpu"))
    labels = torch.tensor(prompt.label_token_ids)
    with torch.no_grad():
        scoring = label_logits(model, batch["input_ids"], batch["attention_mask"], labels)
    training = label_logits(model, batch["input_ids"], batch["attention_mask"], labels).detach()
    torch.testing.assert_close(scoring, training, atol=1e-5, rtol=1e-5)


def test_collate_pads_on_the_left():
    batch = collate([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_package_paths_and_devices():
    assert resolve_path("some/model") == "some/model"
    assert resolve_path("package:sentiment_lora").endswith("sentiment_lora")
    with pytest.raises(UserError, match="not installed"):
        resolve_path("package:no_such_package_here")
    assert pick_device("cpu").type == "cpu"
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            pick_device("cuda")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="could not load the tokenizer"):
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path / "nothing")))


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_word_dropout_drops_at_its_rate_and_keeps_the_expectation(p):
    """Each 16-bit slice of a random word decides one element: the share dropped is p (within five
    standard errors), the kept values are scaled so the mean is unchanged, and every slice of a
    word is used (a sign bit left clear would keep every fourth element)."""
    from sentiment_lora.model import WordDropout

    torch.manual_seed(0)
    drop = WordDropout(p).train()
    x = torch.ones(400, 1001)  # not a multiple of four elements per row
    y = drop(x)
    n = x.numel()
    dropped = (y == 0).double()
    assert abs(dropped.mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert abs(y.double().mean().item() - 1) < 5 * (p / (1 - p) / n) ** 0.5
    lanes = dropped.flatten()[: n - n % 4].view(-1, 4).mean(0)
    assert (lanes - p).abs().max().item() < 5 * (4 * p * (1 - p) / n) ** 0.5
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(WordDropout(p).train()(x.bfloat16()).unique().float().sort().values,
                       torch.tensor([0.0, 1 / (1 - round(p * 65536) / 65536)]).bfloat16().float())


def test_lora_inputs_use_word_dropout(tiny_model_dir):
    from sentiment_lora.config import LoraConfig
    from sentiment_lora.model import WordDropout, add_lora

    cfg = ModelConfig(name_or_path=str(tiny_model_dir), device="cpu")
    model = load_base_model(cfg, torch.device("cpu"), torch.float32, None)
    model = add_lora(model, LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]))
    drops = [m for m in model.modules() if isinstance(m, WordDropout)]
    assert drops and all(d.p == 0.1 for d in drops)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
