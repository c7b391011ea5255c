"""Speed: our pipeline against a faithful reproduction of the seed notebook's, in one process.

Both sides use the same model object, the same IMDB reviews and the same LoRA adapter
settings (r=8, alpha=16, dropout 0.1, q_proj/v_proj, a fresh adapter per measurement), and
they alternate (ours, seed, ours, seed ...) over several repeats; the table shows medians.

The seed's way, as its notebook does it:
- training: Hugging Face ``Trainer``; each example ``Review: {text}\\nSentiment: {label}``
  tokenized with ``padding="max_length", truncation=True, max_length=512`` (right padding);
  causal language-model loss over the whole sequence (``DataCollatorForLanguageModeling``,
  ``mlm=False``: padding masked out of the loss); batch 2 with 8 accumulation steps, lr 2e-4,
  cosine schedule; fp16 mixed precision on GPU, fp32 on CPU.
- scoring: one review at a time under ``torch.no_grad()``, a full forward pass (logits for
  every position), then the two label tokens' logits at the last position are compared.

Ours: ``sentiment_lora.train.fit`` and ``sentiment_lora.scoring.score``, the code that
``sentiment-lora train`` runs: length-sorted micro-batches with dynamic padding, the loss
over the label tokens at the last position only, ``logits_to_keep=1``, inference mode.

Measured: training real (non-padding) tokens/s and reviews/s over a fixed number of
optimizer steps at the seed's effective batch of 16; scoring reviews/s on a fixed set of
test reviews (lengths as they come; both scorers get the same prompt token ids, so the
tokenizer's time is left out of both); peak memory of each phase (peak RSS on CPU, reset
per phase; ``torch.cuda.max_memory_allocated`` on GPU); agreement of the two scorers'
labels; the machine's dense matmul FLOP/s measured in the same run, and the useful model
FLOP/s each side reached (see ``sentiment_lora.perf.forward_flops_per_token``).

    make bench-speed DATA=../shared/imdb            # CPU: SmolLM2-135M from the offline preset
    python benchmarks/bench_speed.py --arch tinyllama --tokenizer DIR --dataset DIR   # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sentiment_lora.config import Config, load_config
from sentiment_lora.model import add_lora
from sentiment_lora.perf import matmul_flops, peak_memory_mb, reset_peak_memory, sequence_flops
from sentiment_lora.precision import this_cpu
from sentiment_lora.prompt import Prompt
from sentiment_lora.scoring import score
from sentiment_lora.train import fit

SEED_MAX_LENGTH = 512
SEED_BATCH, SEED_ACCUM = 2, 8
RESULTS = Path(__file__).parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the seed's way ------------------------------------------------------------------

def seed_train(model, tok, texts: list[str], labels: list[int], label_words: list[str], steps: int,
               device: torch.device, seed: int) -> dict:
    """The notebook's Trainer run for ``steps`` optimizer steps; returns its timing."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    tok.padding_side = "right"  # the tokenizer's default, which the seed kept
    examples = [f"Review: {t}\nSentiment: {label_words[y]}" for t, y in zip(texts, labels)]
    enc = tok(examples, padding="max_length", truncation=True, max_length=SEED_MAX_LENGTH)
    dataset = [{"input_ids": i, "attention_mask": m} for i, m in zip(enc["input_ids"], enc["attention_mask"])]

    class Clock(TrainerCallback):
        start = end = None

        def on_step_begin(self, args, state, control, **kw):
            if self.start is None:
                _sync(device)
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _sync(device)
            self.end = time.perf_counter()

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=SEED_BATCH, gradient_accumulation_steps=SEED_ACCUM,
            max_steps=steps, learning_rate=2e-4, lr_scheduler_type="cosine", fp16=device.type == "cuda",
            use_cpu=device.type == "cpu", save_strategy="no", report_to="none", logging_steps=steps,
            dataloader_num_workers=0, seed=seed, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[clock],
                          data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
        reset_peak_memory(device)
        trainer.train()
    seconds = clock.end - clock.start
    used = dataset[: steps * SEED_BATCH * SEED_ACCUM]
    lengths = [sum(x["attention_mask"]) for x in used]
    return {"seconds": seconds, "tokens": sum(lengths), "reviews": len(used), "lengths": lengths,
            "peak_mem_mb": peak_memory_mb(device)}


def seed_score(model, input_ids: list[list[int]], label_ids: list[int], device: torch.device) -> np.ndarray:
    """One review at a time, all positions' logits, the label tokens compared at the end.
    Returns P(label) from the two label logits, shape (n, labels)."""
    model.eval()
    out = np.zeros((len(input_ids), len(label_ids)))
    with torch.no_grad():
        for row, ids in enumerate(input_ids):
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits  # (1, length, vocab)
            out[row] = torch.softmax(logits[0, -1, label_ids].float(), dim=-1).cpu().numpy()
    return out


# ---- ours --------------------------------------------------------------------------------

def ours_train(model, tok, prompt: Prompt, train_ids: list[list[int]], labels: list[int], cfg: Config,
               accelerator) -> dict:
    with tempfile.TemporaryDirectory() as out:
        stats = fit(model, tok, prompt, train_ids, labels, cfg, accelerator, out)
    used = train_ids[: stats["optimizer_steps"] * cfg.train.batch_size * cfg.train.grad_accum]
    lengths = [len(x) for x in used]
    return {"seconds": stats["train_seconds"], "tokens": sum(lengths), "reviews": len(used),
            "lengths": lengths, "peak_mem_mb": stats["peak_mem_mb"]}


# ---- the benchmark --------------------------------------------------------------------

class Bench:
    """Both sides' models, the prompts and every repeat's figures; ``run`` alternates the sides."""

    def __init__(self, base, tok, cfg: Config, steps: int, device: torch.device, progress=print):
        import copy

        from accelerate import Accelerator

        self.gpu = device.type == "cuda"
        self.accelerator = Accelerator(cpu=not self.gpu, mixed_precision="bf16" if self.gpu else "no")
        self.models = {"seed": base, "ours": copy.deepcopy(base).to(torch.bfloat16) if self.gpu else base}
        self.tok, self.cfg, self.steps, self.device, self.progress = tok, cfg, steps, device, progress
        self.prompt = Prompt(tok, cfg.prompt)
        self.n_train = steps * cfg.train.batch_size * cfg.train.grad_accum
        self.model_cfg = base.config
        self.runs = {"ours": {"train": [], "score": []}, "seed": {"train": [], "score": []}}
        self.probs: dict[str, np.ndarray] = {}

    def train(self, side: str, model, texts: list[str], labels: list[int], train_ids: list[list[int]]):
        if side == "ours":
            t = ours_train(model, self.tok, self.prompt, train_ids, labels, self.cfg, self.accelerator)
            return t, self.accelerator.unwrap_model(model)
        t = seed_train(model, self.tok, texts, labels, self.cfg.prompt.label_words, self.steps, self.device,
                       self.cfg.train.seed)
        self.tok.padding_side = "left"
        return t, model

    def score(self, side: str, model, test_ids: list[list[int]]) -> tuple[np.ndarray, dict]:
        """Scored with the base weights only, so both sides see the very same model."""
        with model.disable_adapter():
            reset_peak_memory(self.device)
            _sync(self.device)
            start = time.perf_counter()
            if side == "ours":
                probs = score(model, test_ids, self.prompt.label_token_ids, self.tok.pad_token_id,
                              self.cfg.eval.batch_size)
            else:
                probs = seed_score(model, test_ids, self.prompt.label_token_ids, self.device)
            _sync(self.device)
            return probs, {"seconds": time.perf_counter() - start, "peak_mem_mb": peak_memory_mb(self.device)}

    def repeat(self, rep: int, repeats: int, texts, labels, train_ids, test_ids) -> None:
        for side in ("ours", "seed"):
            t, model = self.train(side, add_lora(self.models[side], self.cfg.lora), texts, labels, train_ids)
            self.probs[side], s = self.score(side, model, test_ids)
            self.models[side] = model.unload()
            t["flops"] = sequence_flops(self.model_cfg, t.pop("lengths"), backward=True)
            self.runs[side]["train"].append(t)
            self.runs[side]["score"].append(s)
            self.progress(f"repeat {rep + 1}/{repeats} {side}: train {t['tokens'] / t['seconds']:.0f} tokens/s, "
                          f"score {len(test_ids) / s['seconds']:.2f} reviews/s")

    def bf16_opt_in(self, test_ids: list[list[int]], repeats: int) -> dict:
        """bf16 scoring on a CPU, opt-in there, against the seed's fp32 labels."""
        import copy

        cpu16 = copy.deepcopy(self.models["ours"]).to(torch.bfloat16)
        speeds = []
        for _ in range(repeats):
            start = time.perf_counter()
            probs16 = score(cpu16, test_ids, self.prompt.label_token_ids, self.tok.pad_token_id,
                            self.cfg.eval.batch_size)
            speeds.append(len(test_ids) / (time.perf_counter() - start))
        seed_speed = statistics.median(len(test_ids) / r["seconds"] for r in self.runs["seed"]["score"])
        ours, seed_probs = statistics.median(speeds), self.probs["seed"]
        self.progress(f"bf16 scoring (opt-in): {ours:.2f} reviews/s")
        return {"bf16_score_reviews_per_s": {"ours": round(ours, 3), "seed": round(seed_speed, 3),
                                             "ratio": round(ours / seed_speed, 3)},
                "bf16_agreement": round(float((probs16.argmax(1) == seed_probs.argmax(1)).mean()), 4),
                "bf16_max_prob_diff": float(np.abs(probs16 - seed_probs).max())}

    def figure(self, f, phase: str) -> dict:
        ours, seed = (statistics.median(f(r) for r in self.runs[side][phase]) for side in ("ours", "seed"))
        return {"ours": round(ours, 3), "seed": round(seed, 3), "ratio": round(ours / seed, 3)}

    def result(self, test_ids: list[list[int]], repeats: int, opt_in: dict | None) -> dict:
        limit, limit_dtype = matmul_flops(self.device)
        score_flops = sequence_flops(self.model_cfg, [len(x) for x in test_ids])
        ours_probs, seed_probs = self.probs["ours"], self.probs["seed"]
        figure = self.figure
        return {
            "device": _device_name(self.device),
            "cpu": this_cpu().to_dict(),
            "model": getattr(self.model_cfg, "_name_or_path", "") or self.model_cfg.model_type,
            "steps": self.steps, "effective_batch": SEED_BATCH * SEED_ACCUM, "repeats": repeats,
            "ours_micro_batch": self.cfg.train.batch_size, "ours_eval_batch": self.cfg.eval.batch_size,
            "score_reviews": len(test_ids), "max_length": SEED_MAX_LENGTH,
            "train_tokens_per_s": figure(lambda r: r["tokens"] / r["seconds"], "train"),
            "train_reviews_per_s": figure(lambda r: r["reviews"] / r["seconds"], "train"),
            "score_reviews_per_s": figure(lambda r: len(test_ids) / r["seconds"], "score"),
            "peak_mem_mb": {"train": figure(lambda r: r["peak_mem_mb"], "train"),
                            "score": figure(lambda r: r["peak_mem_mb"], "score")},
            "agreement": round(float((ours_probs.argmax(1) == seed_probs.argmax(1)).mean()), 4),
            "max_prob_diff": float(np.abs(ours_probs - seed_probs).max()),
            "positive_rate": {"ours": float(ours_probs.argmax(1).mean()), "seed": float(seed_probs.argmax(1).mean())},
            "matmul_flops": {"value": round(limit), "dtype": limit_dtype},
            "cpu_bf16_opt_in": opt_in,
            "mfu": {"train": figure(lambda r: r["flops"] / r["seconds"] / limit, "train"),
                    "score": figure(lambda r: score_flops / r["seconds"] / limit, "score")},
        }


def run_benchmark(base, tok, cfg: Config, train_texts: list[str], train_labels: list[int], test_texts: list[str],
                  steps: int, repeats: int, device: torch.device, progress=print) -> dict:
    """Alternate both sides ``repeats`` times; returns the figures (medians and ratios).

    On a GPU ours runs as ``sentiment-lora`` does there: bf16 weights and autocast (a bf16
    copy of ``base``). On a CPU both sides run in fp32; bf16 scoring, which is opt-in there
    (``model.dtype=bfloat16``), is measured afterwards as an extra row with its own agreement.
    """
    bench = Bench(base, tok, cfg, steps, device, progress)
    texts, labels = train_texts[: bench.n_train], train_labels[: bench.n_train]
    train_ids = bench.prompt.encode(texts).input_ids
    test_ids = bench.prompt.encode(test_texts).input_ids
    for rep in range(repeats):
        bench.repeat(rep, repeats, texts, labels, train_ids, test_ids)
    opt_in = None if bench.gpu else bench.bf16_opt_in(test_ids, repeats)
    return bench.result(test_ids, repeats, opt_in)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{this_cpu().model}, {torch.get_num_threads()} threads"


def markdown(r: dict) -> str:
    def row(name, f, fmt="{:.1f}"):
        return f"| {name} | {fmt.format(f['ours'])} | {fmt.format(f['seed'])} | {f['ratio']:.2f}x |"

    pct = "{:.1%}"
    lines = [
        f"Device: {r['device']}; {r['model']}; {r['steps']} optimizer steps x {r['effective_batch']} reviews, "
        f"{r['score_reviews']} scored reviews, medians of {r['repeats']} alternating repeats; "
        f"dense {r['matmul_flops']['dtype']} matmul limit {r['matmul_flops']['value'] / 1e9:.0f} GFLOP/s.",
        "",
        "| | ours | seed | ours/seed |",
        "|---|---|---|---|",
        row("training, real tokens/s", r["train_tokens_per_s"]),
        row("training, reviews/s", r["train_reviews_per_s"], "{:.2f}"),
        row("training, model FLOP/s as share of matmul limit", r["mfu"]["train"], pct),
        row("training, peak memory (MB)", r["peak_mem_mb"]["train"], "{:.0f}"),
        row("scoring, reviews/s", r["score_reviews_per_s"], "{:.2f}"),
        row("scoring, model FLOP/s as share of matmul limit", r["mfu"]["score"], pct),
        row("scoring, peak memory (MB)", r["peak_mem_mb"]["score"], "{:.0f}"),
        "",
        f"Agreement of the two scorers' labels: {r['agreement']:.2%} of {r['score_reviews']} reviews "
        f"(largest probability difference {r['max_prob_diff']:.2e}).",
    ]
    if r.get("cpu_bf16_opt_in"):
        b = r["cpu_bf16_opt_in"]
        lines += ["", f"Opt-in bf16 scoring on this CPU (`--set model.dtype=bfloat16`): "
                      f"{b['bf16_score_reviews_per_s']['ours']:.2f} reviews/s, "
                      f"{b['bf16_score_reviews_per_s']['ratio']:.2f}x the seed; its labels agree with the seed's "
                      f"fp32 scorer on {b['bf16_agreement']:.2%} of the reviews "
                      f"(largest probability difference {b['bf16_max_prob_diff']:.2e})."]
    return "\n".join(lines)


def _tinyllama(tok, device: torch.device):
    """TinyLlama-1.1B's architecture with random weights: speed does not depend on the weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                         intermediate_size=5632, vocab_size=max(32000, len(tok)), max_position_embeddings=2048,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    config._name_or_path = "TinyLlama-1.1B architecture, random weights"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/smollm2-cpu.yaml", help="model, prompt and LoRA settings")
    ap.add_argument("--dataset", help="overrides data.dataset (e.g. ../shared/imdb)")
    ap.add_argument("--set", action="append", default=[], help="further config overrides, key=value")
    ap.add_argument("--arch", choices=["config", "tinyllama"], default="config",
                    help="tinyllama: TinyLlama-1.1B's architecture with random weights and --tokenizer")
    ap.add_argument("--tokenizer", help="tokenizer folder for --arch tinyllama")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps of 16 reviews per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--score-reviews", type=int, default=64)
    ap.add_argument("--output", help="JSON path (default benchmarks/results/speed-cpu.json or speed-gpu.json)")
    args = ap.parse_args(argv)

    from sentiment_lora.data import prepare_data
    from sentiment_lora.model import load_base_model, load_tokenizer, pick_device

    # The comparison is at the seed's settings: 512 tokens, effective batch 16, lr 2e-4, cosine.
    sets = [f"prompt.max_length={SEED_MAX_LENGTH}", "train.epochs=1", "train.lr=2e-4", "train.warmup_ratio=0",
            "train.scheduler=cosine", "train.eval_steps=0", "train.save_steps=0", "train.logging_steps=1000",
            "eval.calibrate=false", "data.val_size=0", "lora.r=8", "lora.alpha=16", "lora.dropout=0.1",
            "lora.target_modules=q_proj,v_proj"]
    if args.dataset:
        sets.append(f"data.dataset={args.dataset}")
    cfg = load_config(args.config, sets + args.set)
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    if per_step != SEED_BATCH * SEED_ACCUM:
        ap.error(f"train.batch_size x train.grad_accum is {per_step}; the comparison needs the seed's 16")
    cfg = load_config(args.config, sets + args.set + [f"data.train_size={args.steps * per_step}",
                                                     f"data.test_size={args.score_reviews}"])
    device = pick_device(cfg.model.device)
    if args.arch == "tinyllama":
        if not args.tokenizer:
            ap.error("--arch tinyllama needs --tokenizer")
        cfg = load_config(args.config, sets + args.set + [f"model.name_or_path={args.tokenizer}", "model.gguf_file=",
                                                         f"data.train_size={args.steps * per_step}",
                                                         f"data.test_size={args.score_reviews}"])
    tok = load_tokenizer(cfg.model)
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    if args.arch == "tinyllama":
        base = _tinyllama(tok, device)
    else:
        base = load_base_model(cfg.model, device, torch.float32, tok.pad_token_id)
        base.config._name_or_path = cfg.model.gguf_file or cfg.model.name_or_path
    result = run_benchmark(base, tok, cfg, data.train.texts, data.train.labels, data.test.texts,
                           args.steps, args.repeats, device, progress=lambda m: print(m, file=sys.stderr))
    print(markdown(result))
    out = Path(args.output) if args.output else RESULTS / f"speed-{'gpu' if device.type == 'cuda' else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
