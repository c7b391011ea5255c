"""Fine-tuning: data -> prompts -> LoRA training -> calibration -> test scores -> saved run.

The model is trained as a classifier: the loss is the cross-entropy of a softmax over the
label tokens at the prompt's last position, not a language-model loss over every token.
Training runs through Accelerate, so ``accelerate launch`` spreads the same loop over
several GPUs (each process takes its slice of every global batch).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import (
    Plan,
    clear_run,
    damaged,
    load_checkpoint,
    plan_run,
    remove_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .classifier import SentimentClassifier, head_path, spec_for_run
from .config import Config
from .data import DataBundle, prepare_data
from .decision import UNDECIDED, apply_temperature, best_threshold, decide, decision_margin, fit_temperature, log_loss
from .errors import Interrupted, UserError
from .evaluate import prediction_rows
from .layout import CALIBRATION, CONFIG, CONFUSION, CURVES, LOGS, METRICS, PREDICTIONS, TRAIN_LOG
from .metrics import compute_metrics, expected_calibration_error
from .model import (
    add_label_head,
    add_lora,
    collate,
    label_head,
    label_logits,
    load_base_model,
    load_tokenizer,
    pick_device,
    pick_dtype,
)
from .page import write_report
from .perf import peak_memory_mb, reset_peak_memory
from .prompt import Prompt
from .report import plot_calibration, plot_confusion_matrix, plot_training_curves
from .scoring import score, score_generate
from .signals import StopRequest, signal_name
from .spec import DATA_KEYS
from .storage import write_json, write_jsonl

_MAIN = {"process": True}
"""Whether this is the main process of the run (``run`` sets it): the others say nothing."""


def say(message: str) -> None:
    if _MAIN["process"]:
        tqdm.write(message)


def shared_score(accelerator, n: int, scorer, progress: str | None = None) -> np.ndarray:
    """``scorer(indices, progress)`` over rows 0..n-1, split across the run's processes (every
    world-th row each) and gathered, in row order, on every process. Each row is scored
    exactly once, whether or not n divides by the number of processes."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1:
        return scorer(list(range(n)), progress)
    from accelerate.utils import gather_object

    mine = list(range(rank, n, world))
    parts = gather_object([(mine, scorer(mine, progress if accelerator.is_main_process else None))])
    rows = [i for idx, _ in parts for i in idx]
    if sorted(rows) != list(range(n)):
        raise RuntimeError(f"gathered {len(rows)} scored rows for {n}: a process scored the wrong shard")
    out = None
    for idx, probs in parts:
        out = np.zeros((n, probs.shape[1]), dtype=probs.dtype) if out is None else out
        out[idx] = probs
    return out


def default_output_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _mixed_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def step_batches(lengths: list[int], batch_size: int, grad_accum: int, seed: int, world: int = 1, rank: int = 0):
    """Endless stream of (epoch, micro-batches): one item per optimizer step.

    Each step's reviews come from a fresh seeded shuffle per epoch, so a resumed run replays
    the stream exactly by skipping the steps it already took. Within a step they are sorted
    by length before being cut into micro-batches: neighbours have similar lengths, so
    little padding is computed, and the step's gradient (a mean over the same reviews) is
    unchanged. With several processes each takes every world-th review of the sorted step.
    """
    n, per_step = len(lengths), batch_size * grad_accum * world
    epoch = 0
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, n, per_step):
            chunk = order[start:start + per_step]
            if world > 1 and len(chunk) < per_step:  # every process must take the same number of steps
                break
            mine = sorted(chunk, key=lambda i: -lengths[i])[rank::world]
            yield epoch, [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        epoch += 1


def fit(model, tok, prompt: Prompt, train_ids: list[list[int]], train_labels: list[int],
        val_ids: list[list[int]], val_labels: list[int], cfg: Config, accelerator, run_dir: Path,
        resume: bool) -> tuple[list[dict], dict, np.ndarray | None]:
    """The training loop. Returns the log records, throughput figures and the final
    validation probabilities (None without a validation sample)."""
    from peft import get_peft_model_state_dict
    from transformers import get_scheduler

    t = cfg.train
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = t.batch_size * t.grad_accum * world
    if world > 1:  # incomplete global batches are dropped (see step_batches)
        steps_per_epoch = len(train_ids) // per_step
    else:
        steps_per_epoch = math.ceil(len(train_ids) / per_step)
    if steps_per_epoch == 0:
        raise UserError(f"the train sample ({len(train_ids)}) is smaller than one global batch ({per_step}); "
                        f"raise data.train_size or lower train.batch_size x train.grad_accum")
    total_steps = max(1, math.ceil(t.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    schedule = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[t.scheduler]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=round(t.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model, optimizer = accelerator.prepare(model, optimizer)
    label_ids = torch.tensor(prompt.label_token_ids, device=device)
    pad_id = tok.pad_token_id

    step, log, skipped = 0, [], 0
    if resume:
        step, log, skipped = restore(accelerator.unwrap_model(model), optimizer, scheduler, run_dir, world, rank)
        say(f"resumed from optimizer step {step} of {total_steps}")

    stream = step_batches([len(x) for x in train_ids], t.batch_size, t.grad_accum, t.seed, world, rank)
    for _ in range(step):  # replay the data order up to where we stopped
        next(stream)

    val_probs = None  # of the latest validation pass; the last one is reused for calibration

    def validate() -> float | None:
        nonlocal val_probs
        if not val_ids:
            return None
        plain = accelerator.unwrap_model(model)
        val_probs = shared_score(accelerator, len(val_ids), lambda idx, bar: score(
            plain, [val_ids[i] for i in idx], prompt.label_token_ids, pad_id, cfg.eval.batch_size, progress=bar,
            max_tokens=cfg.eval.max_batch_tokens), "validate")
        return float((decide(val_probs, cfg.eval.threshold) == np.asarray(val_labels)).mean())

    tokens = reviews = 0
    train_seconds = 0.0
    losses: list[float] = []  # since the last log line
    bad_in_a_row = 0
    reset_peak_memory(device)
    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not accelerator.is_main_process)

    def checkpoint() -> None:
        check_finite(params, step, t)  # a checkpoint of broken weights would only be resumed into failure
        rngs = [rng_state()]
        if world > 1:  # each process draws its own dropout masks: every one's generators are kept
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)
        failed = None
        if accelerator.is_main_process:
            plain = accelerator.unwrap_model(model)
            head = label_head(plain)
            try:
                save_checkpoint(run_dir, {"adapter": get_peft_model_state_dict(plain),
                                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                          "step": step, "log": log, "rng": torch.get_rng_state(),
                                          "rng_states": rngs, "skipped": skipped,
                                          **({"head": head.weight.detach().clone(),
                                              "head_token_ids": head.token_ids.cpu()} if head else {})})
            except UserError as exc:  # a full disk: every process must stop, not wait for the main one
                failed = exc
        # Also the barrier: no process runs ahead of a checkpoint it could be resumed from.
        if agreed(1.0 if failed else 0.0, "max"):
            raise failed or UserError("the main process could not save a checkpoint; its message says why")

    def agreed(value: float, how: str) -> float:
        """The same number on every process: the mean of their losses, the max of their stop requests."""
        if world == 1:
            return value
        import torch.distributed as dist

        x = torch.tensor(value, dtype=torch.float64, device=device)
        dist.all_reduce(x, op=dist.ReduceOp.MAX if how == "max" else dist.ReduceOp.SUM)
        return float(x) / (world if how == "mean" else 1)

    stop = StopRequest()
    try:
        with stop:
            while step < total_steps:
                started = time.perf_counter()
                running = 0.0
                _, micros = next(stream)
                n_step = sum(len(idx) for idx in micros)
                for micro, idx in enumerate(micros):
                    batch = collate([train_ids[i] for i in idx], pad_id, device)
                    target = torch.tensor([train_labels[i] for i in idx], device=device)
                    sync = micro == len(micros) - 1
                    with nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
                        logits = label_logits(model, batch["input_ids"], batch["attention_mask"], label_ids)
                        # A sum over the micro-batch divided by the step's size: the mean over the
                        # step's reviews even when micro-batches differ in size.
                        loss = F.cross_entropy(logits, target, reduction="sum") / n_step
                        accelerator.backward(loss)
                    running += loss.item()  # this process's share of the step's mean loss
                    tokens += int(batch["attention_mask"].sum())
                    reviews += len(idx)
                running = agreed(running, "mean")  # each process's rows are as many, so the step's mean
                norm = accelerator.clip_grad_norm_(params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
                # One overflowing batch would turn every weight into NaN for good; like fp16's grad
                # scaler, skip that update instead, and stop if it keeps happening.
                if torch.isfinite(torch.as_tensor(norm)) and math.isfinite(running):
                    optimizer.step()
                    losses.append(running)
                    bad_in_a_row = 0
                else:
                    skipped += 1
                    bad_in_a_row += 1
                    if bad_in_a_row >= 10:
                        raise UserError(f"training diverged: 10 optimizer steps in a row had a non-finite loss or "
                                        f"gradient (last at step {step + 1}); lower train.lr or set "
                                        f"train.mixed_precision=no")
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                train_seconds += time.perf_counter() - started
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}")

                record = {}
                if step % max(t.logging_steps, 1) == 0 or step == total_steps:
                    record.update(step=step, epoch=round(step / steps_per_epoch, 3),
                                  loss=round(sum(losses) / len(losses), 5) if losses else None,
                                  lr=scheduler.get_last_lr()[0], skipped_steps=skipped)
                    losses.clear()
                if (t.eval_steps and step % t.eval_steps == 0) or step == total_steps:
                    acc = validate()
                    if acc is not None:
                        record.update(step=step, val_accuracy=acc)
                        say(f"step {step}: validation accuracy {acc:.4f}")
                if record:
                    log.append(record)
                    if accelerator.is_main_process:
                        write_jsonl(run_dir / TRAIN_LOG, log)
                    if t.report_to:
                        accelerator.log({f"train/{k}": v for k, v in record.items()
                                         if k not in ("step", "epoch") and v is not None}, step=step)
                if stop.signum is not None and not stop.told:
                    stop.told = True
                    say(f"stopping after this step ({signal_name(stop.signum)}); send it again to stop at once")
                # A signal reaches the processes at different moments; they stop at the same step.
                signum = int(agreed(stop.signum or 0, "max"))
                if signum and step < total_steps:
                    checkpoint()
                    raise Interrupted(signum)
                if t.save_steps and step % t.save_steps == 0 and step < total_steps:
                    checkpoint()
            # Asked to stop during the last step: training is done, but the user wants out now,
            # before test scoring and saving; the checkpoint lets --resume do the rest.
            signum = int(agreed(stop.signum or 0, "max"))
            if signum:
                checkpoint()
                raise Interrupted(signum)
    finally:  # an interrupted bar would redraw itself after the message saying how to continue
        bar.close()
    check_finite(params, step, t)
    stats = {
        "optimizer_steps": step,
        "skipped_steps": skipped,
        "train_seconds": round(train_seconds, 2),
        "train_tokens_per_s": round(tokens / train_seconds, 2) if train_seconds else None,
        "train_reviews_per_s": round(reviews / train_seconds, 3) if train_seconds else None,
        "peak_mem_mb": round(peak_memory_mb(device), 1),
    }
    return log, stats, val_probs


def restore(model, optimizer, scheduler, run_dir: Path, world: int = 1,
            rank: int = 0) -> tuple[int, list[dict], int]:
    """Load the newest readable checkpoint into the model, optimizer, scheduler and RNG; returns
    (step, log, skipped steps). A checkpoint that does not fit them is one UserError naming the file."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    state, path = load_checkpoint(run_dir, warn=say)
    want = get_peft_model_state_dict(model)
    have = state["adapter"]
    if set(have) != set(want) or any(have[k].shape != want[k].shape for k in want):
        raise damaged(path, run_dir, "its adapter weights do not match lora.r or lora.target_modules")
    head = label_head(model)
    if (head is None) != ("head" not in state) or head is not None and (
            state["head"].shape != head.weight.shape
            or state.get("head_token_ids", head.token_ids.cpu()).tolist() != head.token_ids.tolist()):
        raise damaged(path, run_dir, "its label head does not match lora.head and the label words")
    try:
        set_peft_model_state_dict(model, have)
        if head is not None:
            with torch.no_grad():
                head.weight.copy_(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("rng_states"):
            rngs = state["rng_states"]
            if len(rngs) != world:
                say(f"warning: {path.name} was written by {len(rngs)} processes and this run has {world}; the data "
                    f"order and random draws after step {state['step']} differ from an uninterrupted run's")
            set_rng_state(rngs[rank if rank < len(rngs) else 0])
        else:  # written by a version that kept torch's CPU generator only
            torch.set_rng_state(state["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise damaged(path, run_dir, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__) from None
    return state["step"], state["log"], int(state.get("skipped", 0))


TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_trackers(names: list[str]) -> None:
    """The experiment trackers asked for are installed (they are optional extras)."""
    import importlib.util
    import os

    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(f"train.report_to names {name}, which is not installed; pip install "
                            f"'sentiment-lora[track]' (tensorboard) or {name}, or drop it from train.report_to")
    if "wandb" in names:
        os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network: logs stay in the run folder


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config -> flat {section.key: scalar} that every tracker accepts as hyperparameters."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def check_finite(params, step: int, t) -> None:
    """Stop a run whose LoRA weights turned infinite or NaN: saving it would ship garbage."""
    if all(bool(torch.isfinite(p).all()) for p in params):
        return
    raise UserError(f"training diverged: the LoRA weights are no longer finite at step {step}; lower train.lr "
                    f"(now {t.lr:g}) or keep train.max_grad_norm above 0, and start the run again")


def calibrate(model, tok, prompt: Prompt, cfg: Config, val_ids: list[list[int]], val_labels: list[int],
              val_probs: np.ndarray | None) -> tuple[float, float, dict | None]:
    """(threshold, temperature, report) fitted on validation as ``eval.calibration`` says, when
    ``eval.calibrate`` asks; else the configured threshold, temperature 1 and no report."""
    if not cfg.eval.calibrate:
        return cfg.eval.threshold, 1.0, None
    if val_probs is None:
        val_probs = score(model, val_ids, prompt.label_token_ids, tok.pad_token_id, cfg.eval.batch_size,
                          progress="validate", max_tokens=cfg.eval.max_batch_tokens)
    binary, kind = len(cfg.prompt.label_words) == 2, cfg.eval.calibration
    temperature = fit_temperature(val_probs, val_labels) if kind != "threshold" or not binary else 1.0
    scaled = apply_temperature(val_probs, temperature)
    threshold = best_threshold(scaled, val_labels) if binary and kind != "temperature" else cfg.eval.threshold
    say(f"calibrated on {len(val_labels)} validation examples: temperature {temperature:.3f}, "
        f"threshold {threshold:.4f}")
    report = calibration_change(val_probs, scaled, val_labels)
    # Validation accuracy is what presets are chosen on (never test), so it is kept here too.
    keep = ~np.isnan(val_probs).any(axis=1)
    report["accuracy"] = float((decide(scaled[keep], threshold) == np.asarray(val_labels)[keep]).mean())
    return threshold, temperature, {"method": kind if binary else "temperature", "temperature": temperature,
                                    "threshold": threshold, "validation": report}


def calibration_change(before: np.ndarray, after: np.ndarray, labels: list[int]) -> dict:
    """Log-loss and ECE before and after calibration (decisions by the threshold are reported
    in the metrics themselves)."""
    keep = ~np.isnan(before).any(axis=1)
    y = np.asarray(labels)[keep]
    return {"n": int(keep.sum()),
            "log_loss_before": log_loss(before[keep], y), "log_loss_after": log_loss(after[keep], y),
            "ece_before": expected_calibration_error(y, before[keep]),
            "ece_after": expected_calibration_error(y, after[keep])}


def test(model, tok, prompt: Prompt, cfg: Config, test_ids: list[list[int]], accelerator) -> tuple[np.ndarray, float]:
    """Probabilities on the test sample by the configured method, split across the run's
    processes, and the seconds it took."""
    started = time.perf_counter()

    def scorer(idx: list[int], bar: str | None) -> np.ndarray:
        ids = [test_ids[i] for i in idx]
        if cfg.eval.method == "generate":
            return score_generate(model, tok, ids, cfg.prompt.label_words, tok.pad_token_id, cfg.eval.batch_size,
                                  cfg.eval.max_new_tokens, bar)[0]
        return score(model, ids, prompt.label_token_ids, tok.pad_token_id, cfg.eval.batch_size, progress=bar,
                     max_tokens=cfg.eval.max_batch_tokens)

    probs = shared_score(accelerator, len(test_ids), scorer, "test")
    return probs, time.perf_counter() - started


def verify_reload(clf: SentimentClassifier, run_dir: Path, texts: list[str], probs: np.ndarray,
                  preds: np.ndarray, device: torch.device, cfg: Config) -> dict:
    """Reload the saved classifier from disk and re-score ``texts``: the saved files must predict
    what the trained model did. A text scored within float noise of the threshold may flip."""
    # Accelerate names a CPU process's device cpu:RANK, which is just the CPU.
    name = "cpu" if device.type == "cpu" else str(device)
    reloaded = SentimentClassifier.from_spec(clf.spec, run_dir, device=name, dtype=cfg.model.dtype)
    again = reloaded.predict_proba(texts)
    flipped = (decide(again, clf.threshold) != preds) & (decision_margin(probs, clf.threshold) > 1e-3)
    if flipped.any():
        raise RuntimeError(f"the classifier reloaded from {run_dir} predicts differently from the trained "
                           f"one on {len(texts)} test reviews; the saved files cannot be trusted")
    return {"n": len(texts), "max_prob_diff": float(np.abs(again - probs).max())}


def save_outputs(run_dir: Path, data: DataBundle, log: list[dict], metrics: dict, preds: np.ndarray,
                 probs: np.ndarray, label_words: list[str]) -> None:
    """predictions.jsonl and the plots."""
    write_jsonl(run_dir / PREDICTIONS, prediction_rows(data.test, preds, probs, label_words))
    plot_training_curves(log, run_dir / CURVES)
    plot_confusion_matrix(metrics["confusion_matrix"], label_words, run_dir / CONFUSION,
                          f"accuracy {metrics['accuracy']:.3f} on {metrics['n']} test examples")
    plot_calibration(metrics["reliability"], run_dir / CALIBRATION,
                     f"ECE {metrics['ece']:.3f} on {metrics['n']} test examples",
                     f"p({label_words[1]})" if len(label_words) == 2 else "confidence of the top label")


def run(cfg: Config, output_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Train, calibrate, evaluate, save and verify a classifier. Returns metrics.json's content."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    wall_start = time.perf_counter()
    run_dir = Path(output_dir) if output_dir else default_output_dir()
    plan = plan_run(run_dir, resume)

    requested = pick_device(cfg.model.device)
    check_trackers(cfg.train.report_to)
    if requested.type == "cuda" and requested.index is not None:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(f"model.device is {cfg.model.device!r}, one GPU, but this run has several processes and "
                            f"each takes its own GPU; use model.device=cuda (or auto), and CUDA_VISIBLE_DEVICES to "
                            f"choose the GPUs")
        torch.cuda.set_device(requested)  # Accelerate then places the model and batches on it
    accelerator = Accelerator(cpu=requested.type == "cpu",
                              mixed_precision=_mixed_precision(cfg.train.mixed_precision, requested),
                              log_with=list(cfg.train.report_to) or None, project_dir=run_dir / LOGS)
    device = accelerator.device
    dtype = pick_dtype(cfg.model.dtype, device)
    _MAIN["process"] = accelerator.is_main_process
    # The seed plus the process's index: each process draws its own dropout masks (the LoRA
    # weights start as the main process's, which DDP sends to the others).
    set_seed(cfg.train.seed, device_specific=True)

    tok = load_tokenizer(cfg.model)
    prompt = Prompt(tok, cfg.prompt)
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    enc = {name: prompt.encode(getattr(data, name).texts) for name in ("train", "val", "test")}
    stats = dict(data.stats)
    stats.update({f"truncated_{name}": e.truncated for name, e in enc.items()})
    say(f"data: {stats['train_sample']} train / {stats['val_sample']} validation / {stats['test_sample']} test "
        f"reviews; duplicates in train {stats['duplicates_in_train']}, test reviews also in train dropped "
        f"{stats['test_rows_in_train_dropped']}; truncated to {cfg.prompt.max_length} tokens: "
        f"{enc['train'].truncated} train, {enc['test'].truncated} test")
    say(f"model: {cfg.model.name_or_path} on {device} ({str(dtype).removeprefix('torch.')}), "
        f"label tokens {dict(zip(cfg.prompt.label_words, prompt.label_token_ids))}")

    model = load_base_model(cfg.model, device, dtype, tok.pad_token_id)
    model = add_lora(model, cfg.lora)
    if cfg.lora.head:
        add_label_head(model, prompt.label_token_ids)
    trainable, total = model.get_nb_trainable_parameters()
    say(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")

    # Nothing is written before data, prompt and model are known to be good; and every
    # process has checked the output folder before the main one creates it.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if plan is Plan.RESTART:
            say(f"starting over in {run_dir}: the run there stopped before its first checkpoint")
            clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            cfg.save(run_dir / CONFIG)
    if cfg.train.report_to:  # TensorBoard, MLflow, W&B (offline unless configured), through Accelerate
        accelerator.init_trackers(run_dir.resolve().name, config=_flat(cfg.to_dict()))

    log, train_stats, val_probs = fit(model, tok, prompt, enc["train"].input_ids, data.train.labels,
                                      enc["val"].input_ids, data.val.labels, cfg, accelerator, run_dir,
                                      plan is Plan.RESUME)
    if train_stats["skipped_steps"]:
        say(f"warning: {train_stats['skipped_steps']} optimizer steps were skipped for a non-finite loss "
            f"or gradient")
    model = accelerator.unwrap_model(model)
    # Every process takes its share of the test sample; only the main one writes.
    raw, eval_seconds = test(model, tok, prompt, cfg, enc["test"].input_ids, accelerator)
    if not accelerator.is_main_process:
        return {}

    threshold, temperature, calibration = calibrate(model, tok, prompt, cfg, enc["val"].input_ids,
                                                    data.val.labels, val_probs)
    probs = apply_temperature(raw, temperature) if temperature != 1.0 and cfg.eval.method == "logits" else raw
    preds = decide(probs, threshold)
    metrics = compute_metrics(data.test.labels, preds, probs, cfg.prompt.label_words, cfg.data.ordinal)
    if calibration is not None:
        calibration["test"] = calibration_change(raw, probs, data.test.labels)
        metrics["calibration"] = calibration
    metrics.update({
        "method": cfg.eval.method, "threshold": threshold, "unparsed": int((preds == UNDECIDED).sum()),
        "eval_reviews_per_s": round(len(data.test) / eval_seconds, 2) if eval_seconds else None,
        "train": train_stats, "data": stats,
    })
    spec = spec_for_run(cfg.model, prompt, threshold, cfg.eval.method, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                        {k: getattr(cfg.data, k) for k in DATA_KEYS}, cfg.eval.max_batch_tokens, temperature,
                        head_path(model))
    clf = SentimentClassifier(model, tok, prompt, threshold=threshold, method=cfg.eval.method, spec=spec,
                              temperature=temperature)
    clf.save_adapter(run_dir)
    save_outputs(run_dir, data, log, metrics, preds, probs, cfg.prompt.label_words)
    if cfg.eval.verify_samples and cfg.eval.method == "logits":
        n = min(cfg.eval.verify_samples, len(data.test))
        metrics["reload_check"] = verify_reload(clf, run_dir, data.test.texts[:n], probs[:n], preds[:n], device, cfg)

    if cfg.train.report_to:
        accelerator.log({f"test/{k}": metrics[k] for k in ("accuracy", "macro_f1", "roc_auc", "ece")
                         if metrics.get(k) is not None}, step=train_stats["optimizer_steps"])
        accelerator.end_training()
    metrics["wall_seconds"] = round(time.perf_counter() - wall_start, 1)
    write_json(run_dir / METRICS, metrics)
    write_report(run_dir, spec)
    spec.save(run_dir)  # last: classifier.json marks a complete, verified run folder
    remove_checkpoints(run_dir)
    if cfg.stack.baseline:  # a complete LLM classifier first; the stack is a step on top of it
        from .stack import stack

        say(f"stacking with {cfg.stack.baseline}")
        # The combiner must be fitted on what the saved classifier computes. Training's own scores
        # are reused only where the reload check found the reloaded classifier within 1e-4 of them
        # (float32 on a CPU); a merged bf16 model on a GPU differs more, and the stack rescores.
        check = metrics.get("reload_check")
        reuse = check is not None and check["max_prob_diff"] <= 1e-4 and val_probs is not None
        scores = None
        if reuse:
            scores = (apply_temperature(val_probs, temperature) if temperature != 1.0 else val_probs, probs)
        metrics["stack"] = stack(run_dir, cfg.stack.baseline, cfg.stack.pool, device=cfg.model.device,
                                 llm_probs=scores, data=data)
    metrics["run_dir"] = str(run_dir)  # returned, not saved: the folder may move
    return metrics
