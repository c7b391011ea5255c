"""The dequantized-GGUF cache: miss, hit, damage, concurrent start, and an unwritable cache."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sentiment_lora.cache import cache_root, check_entry, file_sha256
from sentiment_lora.config import ModelConfig


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("SENTIMENT_LORA_CACHE", str(path))
    return path


@pytest.fixture
def gguf_loads(monkeypatch):
    """Counts the loads that go to the GGUF file itself (the slow dequantizing path)."""
    import sentiment_lora.model as model_mod

    calls = {"model": 0, "tokenizer": 0}
    real_model, real_tok = model_mod.model_from, model_mod.tokenizer_from

    def model_from(source, cfg, dtype):
        calls["model"] += bool(source[1].get("gguf_file"))
        return real_model(source, cfg, dtype)

    def tokenizer_from(source, cfg):
        calls["tokenizer"] += bool(source[1].get("gguf_file"))
        return real_tok(source, cfg)

    monkeypatch.setattr(model_mod, "model_from", model_from)
    monkeypatch.setattr(model_mod, "tokenizer_from", tokenizer_from)
    return calls


def gguf_config(tiny_gguf_dir) -> ModelConfig:
    return ModelConfig(name_or_path=str(tiny_gguf_dir), gguf_file="tiny.gguf", device="cpu")


def load(cfg: ModelConfig):
    from sentiment_lora.model import load_base_model, load_tokenizer

    tok = load_tokenizer(cfg)
    return tok, load_base_model(cfg, torch.device("cpu"), torch.float32, tok.pad_token_id).eval()


def logits(tok, model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(["the film was great", "a dull boring mess"], return_tensors="pt", padding=True)).logits


def entries(cache) -> list:
    return sorted(p.name for p in (cache / "gguf").iterdir() if p.is_dir() and not p.name.startswith("."))


def test_miss_then_hit_gives_the_same_model(tiny_gguf_dir, cache, gguf_loads):
    cfg = gguf_config(tiny_gguf_dir)
    tok, cold = load(cfg)
    assert gguf_loads == {"model": 1, "tokenizer": 1}
    key = file_sha256(tiny_gguf_dir / "tiny.gguf")[:32]
    assert entries(cache) == [f"{key}-float32", f"{key}-tokenizer"]
    for name in entries(cache):
        assert check_entry(cache / "gguf" / name) is None
    assert (cache / "gguf" / f"{key}-float32" / "model.safetensors").is_file()

    import sentiment_lora.cache as cache_mod

    hashed = []
    real_hash = cache_mod.sha256_file
    cache_mod.sha256_file = lambda p: (hashed.append(p), real_hash(p))[1]
    try:
        tok2, warm = load(cfg)
    finally:
        cache_mod.sha256_file = real_hash
    assert gguf_loads == {"model": 1, "tokenizer": 1}  # nothing dequantized again
    assert hashed == []  # and nothing hashed: the entry's files are memoized under their final paths
    assert tok2("the film was great").input_ids == tok("the film was great").input_ids
    torch.testing.assert_close(logits(tok2, warm), logits(tok, cold), rtol=0, atol=0)

    # The cached model is the GGUF model: same logits as loading the file directly.
    from transformers import AutoModelForCausalLM

    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf_dir, gguf_file="tiny.gguf", dtype=torch.float32)
    torch.testing.assert_close(logits(tok, direct.eval()), logits(tok, warm), rtol=0, atol=1e-6)


def test_another_dtype_is_another_entry(tiny_gguf_dir, cache, gguf_loads):
    from sentiment_lora.model import load_base_model

    cfg = gguf_config(tiny_gguf_dir)
    load_base_model(cfg, torch.device("cpu"), torch.float32, None)
    model = load_base_model(cfg, torch.device("cpu"), torch.bfloat16, None)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert gguf_loads["model"] == 2 and sum(n.endswith("bfloat16") for n in entries(cache)) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_damaged_entry_is_rebuilt_with_one_warning(tiny_gguf_dir, cache, gguf_loads, capsys, damage):
    cfg = gguf_config(tiny_gguf_dir)
    tok, _ = load(cfg)
    capsys.readouterr()
    entry = cache / "gguf" / next(n for n in entries(cache) if n.endswith("float32"))
    weights = entry / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        weights.unlink()
    else:
        (entry / "manifest.json").write_text("{not json")
    assert check_entry(entry) is not None

    tok2, model = load(cfg)
    err = capsys.readouterr().err
    warnings = [x for x in err.replace("\r", "\n").splitlines() if "warning" in x]  # not the loaders' bars
    assert len(warnings) == 1 and warnings[0].startswith("warning: cached") and "rebuilding" in warnings[0], err
    assert gguf_loads["model"] == 2 and check_entry(entry) is None
    assert torch.isfinite(logits(tok2, model)).all()


CHILD = """
import json, sys, torch
import sentiment_lora.model as m
from sentiment_lora.config import ModelConfig
calls = []
real = m.model_from
m.model_from = lambda src, cfg, dtype: (calls.append(bool(src[1].get("gguf_file"))), real(src, cfg, dtype))[1]
cfg = ModelConfig(name_or_path=sys.argv[1], gguf_file="tiny.gguf", device="cpu")
model = m.load_base_model(cfg, torch.device("cpu"), torch.float32, None)
print(json.dumps({"dequantized": sum(calls), "norm": float(sum(p.double().abs().sum() for p in model.parameters()))}))
"""


def test_two_processes_starting_together_build_once(tiny_gguf_dir, cache):
    import os

    env = {**os.environ, "SENTIMENT_LORA_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_gguf_dir)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(r["dequantized"] for r in results) == [0, 1]  # one built it, the other waited and read it
    assert results[0]["norm"] == results[1]["norm"]
    assert all(check_entry(cache / "gguf" / n) is None for n in entries(cache))
    assert not [p for p in (cache / "gguf").iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_cache_falls_back_to_the_gguf_file(tiny_gguf_dir, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SENTIMENT_LORA_CACHE", str(blocker / "cache"))  # cannot be created, even as root
    tok, model = load(gguf_config(tiny_gguf_dir))
    err = capsys.readouterr().err
    assert "could not cache" in err and torch.isfinite(logits(tok, model)).all()


def test_cache_location_and_hash_memo(tmp_path, monkeypatch):
    monkeypatch.delenv("SENTIMENT_LORA_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "sentiment-lora"
    monkeypatch.setenv("SENTIMENT_LORA_CACHE", str(tmp_path / "c"))
    f = tmp_path / "f.bin"
    f.write_bytes(b"one")
    first = file_sha256(f)
    assert first == file_sha256(f) and (tmp_path / "c" / "hashes.json").is_file()
    f.write_bytes(b"three")  # a new size (and ctime): hashed again, not served from the memo
    assert file_sha256(f) != first


def test_a_killed_build_leaves_nothing_behind_for_long(tiny_gguf_dir, cache):
    key = file_sha256(tiny_gguf_dir / "tiny.gguf")[:32] + "-float32"
    stale = cache / "gguf" / f".{key}.abc123.tmp"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    load(gguf_config(tiny_gguf_dir))
    assert not stale.exists() and check_entry(cache / "gguf" / key) is None


def test_a_gguf_run_folder_names_no_local_or_cache_path(tiny_gguf_dir, tiny_config, cache, tmp_path):
    """The adapter's config names the base as given, not the cache folder it was loaded from."""
    from sentiment_lora.classifier import SentimentClassifier
    from sentiment_lora.export import export
    from sentiment_lora.train import run

    out = tmp_path / "run"
    run(tiny_config(f"model.name_or_path={tiny_gguf_dir}", "model.gguf_file=tiny.gguf", "train.epochs=1"), out)
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_gguf_dir)
    exported = export(out, tmp_path / "exp")
    for folder in (out, exported):
        for f in folder.rglob("*"):
            if f.suffix in (".json", ".jsonl", ".md", ".yaml"):
                text = f.read_text()
                assert str(cache) not in text and str(out) not in text and ".venv" not in text, f
    again = SentimentClassifier.load(exported, merge=False)
    again.save_pretrained(tmp_path / "resaved")  # an unmerged export saves with its base model
    texts = ["great film", "dull mess"]
    assert np.abs(SentimentClassifier.load(tmp_path / "resaved").predict_proba(texts)
                  - SentimentClassifier.load(out).predict_proba(texts)).max() <= 1e-5
