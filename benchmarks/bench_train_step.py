"""One training micro-batch of the demo's LoRA setup, timed: where bf16 training's time goes.

The demo preset's model and LoRA (configs/smollm2-cpu.yaml) on random token ids of a fixed
shape, forward and backward through ``label_logits`` as ``train`` runs them, an AdamW step every
8 micro-batches. After 3 untimed micro-batches, the median of --steps is printed as tokens/s.
Variants: --precision bf16 (autocast, frozen weights held in bf16 as train does), --attention
eager (transformers' matmul attention instead of SDPA), --torch-dropout (torch's dropout on the
LoRA inputs instead of model.WordDropout), --compile (torch.compile of each decoder layer; the
first micro-batch's time, mostly compiling, is printed apart) and --profile (a torch.profiler
table of 4 more micro-batches).

    python benchmarks/bench_train_step.py --precision bf16 --batch 2 --length 192
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sentiment_lora.config import load_config
from sentiment_lora.model import add_lora, label_logits, load_base_model, load_tokenizer
from sentiment_lora.precision import hold_frozen_in_bf16, this_cpu

ROOT = Path(__file__).resolve().parents[1]


def build(args):
    cfg = load_config(ROOT / "configs/smollm2-cpu.yaml")
    tok = load_tokenizer(cfg.model)
    model = add_lora(load_base_model(cfg.model, torch.device("cpu"), torch.float32, tok.pad_token_id), cfg.lora)
    if args.torch_dropout:
        for module in model.modules():
            for name in getattr(module, "lora_dropout", {}):
                module.lora_dropout[name] = torch.nn.Dropout(cfg.lora.dropout)
    if args.precision == "bf16":
        hold_frozen_in_bf16(model)
    if args.attention == "eager":
        model.get_base_model().set_attn_implementation("eager")
    if args.compile:
        for layer in model.get_base_model().get_decoder().layers:
            layer.compile()
    labels = torch.tensor([tok.convert_tokens_to_ids(w) for w in cfg.prompt.label_words])
    return model.train(), labels


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--batch", type=int, default=2, help="reviews per micro-batch")
    ap.add_argument("--length", type=int, default=192, help="tokens per review")
    ap.add_argument("--steps", type=int, default=10, help="timed micro-batches")
    ap.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--torch-dropout", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    model, labels = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step(i: int) -> float:
        started = time.perf_counter()
        ids = torch.randint(0, 49000, (args.batch, args.length), generator=gen)
        target = torch.randint(0, 2, (args.batch,), generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = F.cross_entropy(label_logits(model, ids, torch.ones_like(ids), labels), target)
        loss.backward()
        if i % 8 == 7:
            optimizer.step()
            optimizer.zero_grad()
        return time.perf_counter() - started

    first = step(0)
    for i in range(1, 3):
        step(i)
    median = statistics.median(step(i) for i in range(3, 3 + args.steps))
    print(json.dumps({**vars(args), "cpu": this_cpu().to_dict(), "threads": torch.get_num_threads(),
                      "first_micro_batch_s": round(first, 2), "median_ms": round(1000 * median, 1),
                      "tokens_per_s": round(args.batch * args.length / median, 1)}))
    if args.profile:
        with torch.profiler.profile() as prof:
            for i in range(4):
                step(i)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
