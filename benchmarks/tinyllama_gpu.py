"""Run the seed's TinyLlama setup (configs/tinyllama-imdb.yaml) where its weights can't be downloaded.

Builds a model of TinyLlama-1.1B's architecture (hidden 2048, 22 layers, 32 heads, 4
key-value heads, intermediate 5632) with random weights and the given tokenizer, then
runs the unchanged training pipeline on it with the preset's batch size, accumulation,
learning rate, precision and 512-token inputs. Speed and memory do not depend on the
weights; accuracy does, so the accuracy it prints says nothing about TinyLlama.

    python benchmarks/tinyllama_gpu.py --tokenizer DIR --dataset DIR --train-size 2000 --test-size 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sentiment_lora.config import load_config
from sentiment_lora.train import run

PRESET = Path(__file__).resolve().parents[1] / "configs" / "tinyllama-imdb.yaml"


def build_model(tokenizer_dir: str, out: Path) -> Path:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="folder of a Hugging Face tokenizer")
    ap.add_argument("--dataset", required=True, help="IMDB as a local folder (parquet files or aclImdb layout)")
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--workdir", default="/tmp/tinyllama-check")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()

    work = Path(args.workdir)
    started = time.perf_counter()
    model_dir = build_model(args.tokenizer, work / "model")
    print(f"built a random TinyLlama-shaped model in {time.perf_counter() - started:.0f} s")
    cfg = load_config(PRESET, [f"model.name_or_path={model_dir}", f"data.dataset={args.dataset}",
                               f"data.train_size={args.train_size}", f"data.test_size={args.test_size}",
                               "data.val_size=200", f"train.epochs={args.epochs}", "train.save_steps=0",
                               "train.eval_steps=0", *args.set])
    metrics = run(cfg, work / "run")
    t = metrics["train"]
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "train_reviews": metrics["data"]["train_sample"], "optimizer_steps": t["optimizer_steps"],
        "train_seconds": t["train_seconds"], "train_tokens_per_s": t["train_tokens_per_s"],
        "train_reviews_per_s": t["train_reviews_per_s"], "peak_mem_mb": t["peak_mem_mb"],
        "eval_reviews_per_s": metrics["eval_reviews_per_s"], "wall_seconds": metrics["wall_seconds"],
        "seed_full_run_train_minutes_estimate": round(2 * 15000 / t["train_reviews_per_s"] / 60, 1),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
