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
from .classifier import SentimentClassifier, head_path, spec_for_run, write_classifier
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
from .multiprocess import agreed, gathered, release, shared_score
from .perf import peak_memory_mb, reset_peak_memory
from .precision import (
    apply_precision,
    hold_frozen_in_bf16,
    restore_frozen,
    scoring_budget,
    scoring_precision,
    this_cpu,
    training_precision,
)
from .prompt import Prompt
from .report import plot_calibration, plot_confusion_matrix, plot_training_curves
from .scoring import score, score_generate
from .signals import StopRequest, signal_name
from .spec import DATA_KEYS
from .storage import write_json, write_jsonl


def default_output_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


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
              val_probs: np.ndarray | None, say=print, precision: str = "fp32") -> tuple[float, float, dict | None]:
    """(threshold, temperature, report) fitted on validation as ``eval.calibration`` says, when
    ``eval.calibrate`` asks; else the configured threshold, temperature 1 and no report. ``model``
    scores in ``precision``."""
    if not cfg.eval.calibrate:
        return cfg.eval.threshold, 1.0, None
    if val_probs is None:
        val_probs = score(model, val_ids, prompt.label_token_ids, tok.pad_token_id, cfg.eval.batch_size,
                          progress="validate", max_tokens=scoring_budget(cfg.eval.max_batch_tokens, precision))
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


def test(model, tok, prompt: Prompt, cfg: Config, test_ids: list[list[int]], accelerator,
         precision: str = "fp32") -> tuple[np.ndarray, float]:
    """Probabilities on the test sample by the configured method, split across the run's
    processes, and the seconds it took. ``model`` scores in ``precision``."""
    started = time.perf_counter()

    def scorer(idx: list[int], bar: str | None) -> np.ndarray:
        ids = [test_ids[i] for i in idx]
        if cfg.eval.method == "generate":
            return score_generate(model, tok, ids, cfg.prompt.label_words, tok.pad_token_id, cfg.eval.batch_size,
                                  cfg.eval.max_new_tokens, bar)[0]
        return score(model, ids, prompt.label_token_ids, tok.pad_token_id, cfg.eval.batch_size, progress=bar,
                     max_tokens=scoring_budget(cfg.eval.max_batch_tokens, precision))

    probs = shared_score(accelerator, len(test_ids), scorer, "test")
    return probs, time.perf_counter() - started


def verify_reload(clf: SentimentClassifier, run_dir: Path, texts: list[str], probs: np.ndarray,
                  preds: np.ndarray, device: torch.device, cfg: Config, same_batches: np.ndarray | None = None) -> dict:
    """Reload the saved classifier from disk and re-score ``texts``: the saved files must predict
    what the trained model did. A text scored within float noise of the threshold may flip.
    ``same_batches``: the trained model's probabilities of ``texts`` batched as the reloaded one
    batches them; in bf16 a batch's make-up moves a probability by about 1e-3, so only this
    comparison tells whether the files reproduce the trained model's numbers exactly."""
    # Accelerate names a CPU process's device cpu:RANK, which is just the CPU.
    name = "cpu" if device.type == "cpu" else str(device)
    reloaded = SentimentClassifier.from_spec(clf.spec, run_dir, device=name, dtype=cfg.model.dtype)
    again = reloaded.predict_proba(texts)
    flipped = (decide(again, clf.threshold) != preds) & (decision_margin(probs, clf.threshold) > 1e-3)
    if flipped.any():
        raise RuntimeError(f"the classifier reloaded from {run_dir} predicts differently from the trained "
                           f"one on {len(texts)} test reviews; the saved files cannot be trusted")
    check = {"n": len(texts), "max_prob_diff": float(np.abs(again - probs).max())}
    if same_batches is not None:
        check["max_prob_diff_same_batches"] = float(np.abs(again - same_batches).max())
    return check


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


class Recipe:
    """One training run, read top to bottom in ``run``: ``setup`` builds the accelerator, data,
    model and optimizer; ``train`` runs the loop of ``train_step``, ``validate`` and
    ``save_checkpoint``; ``finalize`` calibrates, tests, saves and verifies. The run's state
    (step, log, counters, the latest validation scores) lives on this object."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool):
        self.cfg, self.run_dir, self.resume = cfg, run_dir, resume
        self.started = time.perf_counter()
        self.plan = plan_run(run_dir, resume)
        self.step, self.log, self.skipped = 0, [], 0
        self.val_probs: np.ndarray | None = None  # of the latest validation pass; the last one calibrates
        self.scorer = None  # the model calibration and the test score with (``scoring_model``)
        self.tokens = self.reviews = 0
        self.train_seconds = 0.0
        self.losses: list[float] = []  # since the last log line
        self.bad_in_a_row = 0
        self.stop = StopRequest()
        self.accelerator = None
        self.precision = "fp32"  # of scoring: finalize chooses it
        self.frozen: dict = {}  # fp32 originals of frozen weights held in bf16 for a bf16 CPU run

    def say(self, message: str) -> None:
        """A line for the user, from the main process only."""
        if self.accelerator is None or self.accelerator.is_main_process:
            tqdm.write(message)

    # --- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        # The data first: a bad dataset is one line before the accelerator, tokenizer and model load.
        self.data = prepare_data(self.cfg.data, self.cfg.prompt.label_words)
        self.setup_accelerator()
        self.setup_data()
        self.setup_model()
        self.start_folder()
        self.setup_optimizer()
        if self.plan is Plan.RESUME:
            self.restore()
            self.say(f"resumed from optimizer step {self.step} of {self.total_steps}")

    def setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        requested = pick_device(cfg.model.device)
        check_trackers(cfg.train.report_to)
        if requested.type == "cuda" and requested.index is not None:
            import os

            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise UserError(f"model.device is {cfg.model.device!r}, one GPU, but this run has several processes "
                                f"and each takes its own GPU; use model.device=cuda (or auto), and "
                                f"CUDA_VISIBLE_DEVICES to choose the GPUs")
            torch.cuda.set_device(requested)  # Accelerate then places the model and batches on it
        told: list[str] = []  # said once the main process is known
        precision = training_precision(cfg.train.mixed_precision, requested.type, say=told.append)
        self.accelerator = Accelerator(cpu=requested.type == "cpu", mixed_precision=precision,
                                       log_with=list(cfg.train.report_to) or None, project_dir=self.run_dir / LOGS)
        for line in told:
            self.say(line)
        self.device = self.accelerator.device
        self.dtype = pick_dtype(cfg.model.dtype, self.device)
        # The seed plus the process's index: each process draws its own dropout masks (the LoRA
        # weights start as the main process's, which DDP sends to the others).
        set_seed(cfg.train.seed, device_specific=True)

    def setup_data(self) -> None:
        """The tokenizer and prompt, and the prepared data encoded with them."""
        cfg = self.cfg
        self.tok = load_tokenizer(cfg.model)
        self.prompt = Prompt(self.tok, cfg.prompt)
        self.enc = {name: self.prompt.encode(getattr(self.data, name).texts) for name in ("train", "val", "test")}
        self.stats = dict(self.data.stats)
        self.stats.update({f"truncated_{name}": e.truncated for name, e in self.enc.items()})
        st = self.stats
        self.say(f"data: {st['train_sample']} train / {st['val_sample']} validation / {st['test_sample']} test "
                 f"reviews; duplicates in train {st['duplicates_in_train']}, test reviews also in train dropped "
                 f"{st['test_rows_in_train_dropped']}; truncated to {cfg.prompt.max_length} tokens: "
                 f"{self.enc['train'].truncated} train, {self.enc['test'].truncated} test")

    def setup_model(self) -> None:
        cfg = self.cfg
        self.say(f"model: {cfg.model.name_or_path} on {self.device} ({str(self.dtype).removeprefix('torch.')}), "
                 f"label tokens {dict(zip(cfg.prompt.label_words, self.prompt.label_token_ids))}")
        model = load_base_model(cfg.model, self.device, self.dtype, self.tok.pad_token_id)
        model = add_lora(model, cfg.lora)
        if cfg.lora.head:
            add_label_head(model, self.prompt.label_token_ids)
        trainable, total = model.get_nb_trainable_parameters()
        self.say(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")
        if self.device.type == "cpu" and self.accelerator.mixed_precision == "bf16":
            self.frozen = hold_frozen_in_bf16(model)
        self.model = model

    def start_folder(self) -> None:
        """Nothing is written before data, prompt and model are known to be good; and every
        process has checked the output folder before the main one creates it."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if self.plan is Plan.RESTART:
                self.say(f"starting over in {self.run_dir}: the run there stopped before its first checkpoint")
                clear_run(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                self.cfg.save(self.run_dir / CONFIG)
        if self.cfg.train.report_to:  # TensorBoard, MLflow, W&B (offline unless configured), through Accelerate
            self.accelerator.init_trackers(self.run_dir.resolve().name, config=_flat(self.cfg.to_dict()))

    def setup_optimizer(self) -> None:
        from transformers import get_scheduler

        t, world = self.cfg.train, self.accelerator.num_processes
        per_step = t.batch_size * t.grad_accum * world
        n = len(self.enc["train"].input_ids)
        # Several processes drop an incomplete last global batch (see step_batches).
        self.steps_per_epoch = n // per_step if world > 1 else math.ceil(n / per_step)
        if self.steps_per_epoch == 0:
            raise UserError(f"the train sample ({n}) is smaller than one global batch ({per_step}); "
                            f"raise data.train_size or lower train.batch_size x train.grad_accum")
        self.total_steps = max(1, math.ceil(t.epochs * self.steps_per_epoch))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay)
        schedule = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[t.scheduler]
        self.scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=round(t.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        if t.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.enable_input_require_grads()
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.label_ids = torch.tensor(self.prompt.label_token_ids, device=self.device)

    # --- checkpoints --------------------------------------------------------------------------

    def restore(self) -> None:
        """Load the newest readable checkpoint into the model, optimizer, scheduler and RNG. A
        checkpoint that does not fit them is one UserError naming the file."""
        from peft import set_peft_model_state_dict

        state, path = load_checkpoint(self.run_dir, warn=self.say)
        model = self.accelerator.unwrap_model(self.model)
        check_fits(state, path, model, self.run_dir)
        try:
            set_peft_model_state_dict(model, state["adapter"])
            if label_head(model) is not None:
                with torch.no_grad():
                    label_head(model).weight.copy_(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.restore_rng(state, path)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise damaged(path, self.run_dir, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__) \
                from None
        self.step, self.log, self.skipped = state["step"], state["log"], int(state.get("skipped", 0))

    def restore_rng(self, state: dict, path: Path) -> None:
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        rngs = state.get("rng_states")
        if not rngs:  # written by a version that kept torch's CPU generator only
            torch.set_rng_state(state["rng"])
            return
        if len(rngs) != world:
            self.say(f"warning: {path.name} was written by {len(rngs)} processes and this run has {world}; the "
                     f"data order and random draws after step {state['step']} differ from an uninterrupted run's")
        set_rng_state(rngs[rank if rank < len(rngs) else 0])

    def save_checkpoint(self) -> None:
        """Every process's random state gathered, the main process writes; a failed write stops
        every process (this is also the barrier no process runs ahead of)."""
        from peft import get_peft_model_state_dict

        check_finite(self.params, self.step, self.cfg.train)  # broken weights would only be resumed into failure
        rngs = gathered(self.accelerator, [rng_state()])
        failed = None
        if self.accelerator.is_main_process:
            plain = self.accelerator.unwrap_model(self.model)
            head = label_head(plain)
            try:
                save_checkpoint(self.run_dir, {
                    "adapter": get_peft_model_state_dict(plain), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "step": self.step, "log": self.log,
                    "rng": torch.get_rng_state(), "rng_states": rngs, "skipped": self.skipped,
                    **({"head": head.weight.detach().clone(), "head_token_ids": head.token_ids.cpu()} if head else {})})
            except UserError as exc:  # a full disk: every process must stop, not wait for the main one
                failed = exc
        if agreed(self.accelerator, 1.0 if failed else 0.0, "max"):
            raise failed or UserError("the main process could not save a checkpoint; its message says why")

    # --- the loop -------------------------------------------------------------------------------

    def train(self) -> dict:
        """The training loop; returns the throughput figures."""
        t = self.cfg.train
        stream = step_batches([len(x) for x in self.enc["train"].input_ids], t.batch_size, t.grad_accum, t.seed,
                              self.accelerator.num_processes, self.accelerator.process_index)
        for _ in range(self.step):  # replay the data order up to where we stopped
            next(stream)
        reset_peak_memory(self.device)
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=not self.accelerator.is_main_process)
        try:  # an interrupted bar would redraw itself after the message saying how to continue
            with self.stop:
                while self.step < self.total_steps:
                    started = time.perf_counter()
                    loss = self.train_step(next(stream)[1])
                    self.train_seconds += time.perf_counter() - started
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    self.record(loss)
                    self.checkpoint_or_stop()
                # Asked to stop during the last step: training is done, but the user wants out now,
                # before test scoring and saving; the checkpoint lets --resume do the rest.
                self.stop_if_asked()
        finally:
            bar.close()
        check_finite(self.params, self.step, t)
        return self.throughput()

    def train_step(self, micros: list[list[int]]) -> float:
        """One optimizer step over its micro-batches; returns the step's mean loss over every process."""
        train_ids, labels = self.enc["train"].input_ids, self.data.train.labels
        n_step, running = sum(len(idx) for idx in micros), 0.0
        for micro, idx in enumerate(micros):
            batch = collate([train_ids[i] for i in idx], self.tok.pad_token_id, self.device)
            target = torch.tensor([labels[i] for i in idx], device=self.device)
            sync = micro == len(micros) - 1
            with nullcontext() if sync else self.accelerator.no_sync(self.model), self.accelerator.autocast():
                logits = label_logits(self.model, batch["input_ids"], batch["attention_mask"], self.label_ids)
                # A sum over the micro-batch divided by the step's size: the mean over the
                # step's reviews even when micro-batches differ in size.
                loss = F.cross_entropy(logits, target, reduction="sum") / n_step
                self.accelerator.backward(loss)
            running += loss.item()  # this process's share of the step's mean loss
            self.tokens += int(batch["attention_mask"].sum())
            self.reviews += len(idx)
        running = agreed(self.accelerator, running, "mean")  # each process's rows are as many
        self.apply_step(running)
        return running

    def apply_step(self, loss: float) -> None:
        """Take the optimizer step, or skip it for a non-finite loss or gradient: one overflowing
        batch would turn every weight into NaN for good (as fp16's grad scaler skips it); stop
        if it keeps happening."""
        t = self.cfg.train
        norm = self.accelerator.clip_grad_norm_(self.params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
        if torch.isfinite(torch.as_tensor(norm)) and math.isfinite(loss):
            self.optimizer.step()
            self.losses.append(loss)
            self.bad_in_a_row = 0
        else:
            self.skipped += 1
            self.bad_in_a_row += 1
            if self.bad_in_a_row >= 10:
                raise UserError(f"training diverged: 10 optimizer steps in a row had a non-finite loss or "
                                f"gradient (last at step {self.step + 1}); lower train.lr or set "
                                f"train.mixed_precision=no")
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def record(self, loss: float) -> None:
        """The step's log line (every logging_steps) and validation (every eval_steps, and last)."""
        t, step = self.cfg.train, self.step
        record = {}
        if step % max(t.logging_steps, 1) == 0 or step == self.total_steps:
            record.update(step=step, epoch=round(step / self.steps_per_epoch, 3),
                          loss=round(sum(self.losses) / len(self.losses), 5) if self.losses else None,
                          lr=self.scheduler.get_last_lr()[0], skipped_steps=self.skipped)
            self.losses.clear()
        if (t.eval_steps and step % t.eval_steps == 0) or step == self.total_steps:
            acc = self.validate()
            if acc is not None:
                record.update(step=step, val_accuracy=acc)
                self.say(f"step {step}: validation accuracy {acc:.4f}")
        if not record:
            return
        self.log.append(record)
        if self.accelerator.is_main_process:
            write_jsonl(self.run_dir / TRAIN_LOG, self.log)
        if t.report_to:
            self.accelerator.log({f"train/{k}": v for k, v in record.items()
                                  if k not in ("step", "epoch") and v is not None}, step=step)

    def validate(self) -> float | None:
        """Accuracy on the validation sample, its rows split across processes; None without one."""
        val_ids = self.enc["val"].input_ids
        if not val_ids:
            return None
        plain, ev = self.accelerator.unwrap_model(self.model), self.cfg.eval
        with self.accelerator.autocast():  # the training precision (its frozen weights may be bf16)
            self.val_probs = shared_score(self.accelerator, len(val_ids), lambda idx, bar: score(
                plain, [val_ids[i] for i in idx], self.prompt.label_token_ids, self.tok.pad_token_id, ev.batch_size,
                progress=bar, max_tokens=ev.max_batch_tokens), "validate")
        return float((decide(self.val_probs, ev.threshold) == np.asarray(self.data.val.labels)).mean())

    def checkpoint_or_stop(self) -> None:
        """A signal reaches the processes at different moments: they agree on it, and stop at the
        same step with a checkpoint of it; otherwise a checkpoint every save_steps."""
        if self.stop.signum is not None and not self.stop.told:
            self.stop.told = True
            self.say(f"stopping after this step ({signal_name(self.stop.signum)}); send it again to stop at once")
        signum = int(agreed(self.accelerator, self.stop.signum or 0, "max"))
        if signum and self.step < self.total_steps:
            self.save_checkpoint()
            raise Interrupted(signum)
        save_steps = self.cfg.train.save_steps
        if save_steps and self.step % save_steps == 0 and self.step < self.total_steps:
            self.save_checkpoint()

    def stop_if_asked(self) -> None:
        signum = int(agreed(self.accelerator, self.stop.signum or 0, "max"))
        if signum:
            self.save_checkpoint()
            raise Interrupted(signum)

    def throughput(self) -> dict:
        s = self.train_seconds
        return {"optimizer_steps": self.step, "skipped_steps": self.skipped, "train_seconds": round(s, 2),
                "train_tokens_per_s": round(self.tokens / s, 2) if s else None,
                "train_reviews_per_s": round(self.reviews / s, 3) if s else None,
                "peak_mem_mb": round(peak_memory_mb(self.device), 1),
                "mixed_precision": self.accelerator.mixed_precision, "cpu": this_cpu().to_dict()}

    def cleanup(self) -> None:
        """Every process closes its process group before it exits, the main one after its
        saving: a worker that exits with the group open can abort in the backend's threads."""
        if self.accelerator is not None:
            release(self.accelerator)

    # --- finalize -------------------------------------------------------------------------------

    def finalize(self, train_stats: dict) -> dict:
        """Test scores on every process; then, on the main one, calibration, metrics, the saved
        classifier, its reload check, the report and classifier.json (last). Returns the
        metrics ({} on the other processes)."""
        if train_stats["skipped_steps"]:
            self.say(f"warning: {train_stats['skipped_steps']} optimizer steps were skipped for a non-finite loss "
                     f"or gradient")
        self.model = self.accelerator.unwrap_model(self.model)
        if self.frozen:  # the fp32 base again: validation ran on the bf16 one
            restore_frozen(self.model, self.frozen)
            self.frozen, self.val_probs = {}, None
        scorer = self.scoring_model()
        # Every process takes its share of the test sample; only the main one writes.
        raw, eval_seconds = test(scorer, self.tok, self.prompt, self.cfg, self.enc["test"].input_ids,
                                 self.accelerator, self.precision)
        if not self.accelerator.is_main_process:
            return {}
        clf, metrics, probs = self.evaluate(raw, eval_seconds, train_stats, scorer)
        self.save(clf, metrics, probs)
        if self.cfg.stack.baseline:  # a complete LLM classifier first; the stack is a step on top of it
            metrics["stack"] = self.stack(metrics, clf.temperature, probs)
        metrics["run_dir"] = str(self.run_dir)  # returned, not saved: the folder may move
        return metrics

    def scoring_model(self):
        """What the saved classifier will score with, so calibration and the test measure it: the
        trained model in fp32; else a merged copy in the CPU scoring precision, as
        ``SentimentClassifier.load`` builds it (the adapter is saved from the fp32 original)."""
        self.precision = scoring_precision(self.cfg.eval.precision, self.device.type, self.cfg.model.dtype)
        if self.cfg.eval.method != "logits":
            self.precision = "fp32"
        if self.precision == "fp32":
            return self.model
        import copy

        self.val_probs = None  # validation is scored again, in the scoring precision
        merged = copy.deepcopy(self.model).merge_and_unload()
        return apply_precision(merged.eval(), self.precision)

    def evaluate(self, raw: np.ndarray, eval_seconds: float, train_stats: dict, scorer):
        """(the classifier as trained and calibrated, its test metrics, its test probabilities)."""
        cfg, test_labels = self.cfg, self.data.test.labels
        self.scorer = scorer  # the reload check compares the saved files with it
        self.score_validation(scorer)
        threshold, temperature, calibration = calibrate(scorer, self.tok, self.prompt, cfg,
                                                        self.enc["val"].input_ids, self.data.val.labels,
                                                        self.val_probs, self.say, self.precision)
        probs = apply_temperature(raw, temperature) if temperature != 1.0 and cfg.eval.method == "logits" else raw
        preds = decide(probs, threshold)
        metrics = compute_metrics(test_labels, preds, probs, cfg.prompt.label_words, cfg.data.ordinal)
        if calibration is not None:
            calibration["test"] = calibration_change(raw, probs, test_labels)
            metrics["calibration"] = calibration
        metrics.update({"method": cfg.eval.method, "threshold": threshold,
                        "unparsed": int((preds == UNDECIDED).sum()),
                        "eval_reviews_per_s": round(len(test_labels) / eval_seconds, 2) if eval_seconds else None,
                        "precision": self.precision, "train": train_stats, "data": self.stats})
        spec = spec_for_run(cfg.model, self.prompt, threshold, cfg.eval.method, cfg.eval.batch_size,
                            cfg.eval.max_new_tokens, {k: getattr(cfg.data, k) for k in DATA_KEYS},
                            cfg.eval.max_batch_tokens, temperature, head_path(self.model), self.precision)
        clf = SentimentClassifier(self.model, self.tok, self.prompt, threshold=threshold, method=cfg.eval.method,
                                  spec=spec, temperature=temperature)
        return clf, metrics, probs

    def save(self, clf: SentimentClassifier, metrics: dict, probs: np.ndarray) -> None:
        """The classifier folder, verified by reloading it before classifier.json seals it; the
        checkpoints go once the folder is complete."""
        spec = write_classifier(self.run_dir, clf.spec, clf,
                                extras=lambda run_dir: self.save_results(clf, metrics, probs))
        remove_checkpoints(self.run_dir)
        scores = self.llm_scores(metrics, clf.temperature, probs)
        if scores is not None:  # for a later `stack`; classifier.json names the classifier they are of
            from .stack import save_scores  # scikit-learn comes with it: imported once it is needed

            samples = zip((self.data.val.texts, self.data.test.texts), scores)
            save_scores(self.run_dir, spec, self.precision, self.device.type, samples)

    def score_validation(self, scorer) -> None:
        """The scoring model's validation probabilities, when calibration needs them and the last
        validation pass did not leave them: calibrated on, then saved for ``stack``."""
        ids, ev = self.enc["val"].input_ids, self.cfg.eval
        if self.val_probs is None and ids and ev.calibrate and ev.method == "logits":
            self.val_probs = score(scorer, ids, self.prompt.label_token_ids, self.tok.pad_token_id, ev.batch_size,
                                   progress="validate", max_tokens=scoring_budget(ev.max_batch_tokens, self.precision))

    def same_batches(self, n: int, temperature: float) -> np.ndarray:
        """The scoring model's probabilities of the first ``n`` test reviews, scored on their own as
        the reload check scores them."""
        ev = self.cfg.eval
        raw = score(self.scorer, self.enc["test"].input_ids[:n], self.prompt.label_token_ids, self.tok.pad_token_id,
                    ev.batch_size, max_tokens=scoring_budget(ev.max_batch_tokens, self.precision))
        return apply_temperature(raw, temperature) if temperature != 1.0 else raw

    def llm_scores(self, metrics: dict, temperature: float, probs: np.ndarray) -> tuple | None:
        """Training's own (validation, test) probabilities, calibrated, where they are what the saved
        classifier computes when it scores the same samples (batched alike): the reload check found
        it within 1e-4 of the trained model on the same batches."""
        check = metrics.get("reload_check")
        if check is None or check.get("max_prob_diff_same_batches", np.inf) > 1e-4 or self.val_probs is None \
                or self.cfg.eval.method != "logits":
            return None
        val = apply_temperature(self.val_probs, temperature) if temperature != 1.0 else self.val_probs
        return val, probs

    def save_results(self, clf: SentimentClassifier, metrics: dict, probs: np.ndarray) -> None:
        """Predictions and plots, the reload check of the saved weights, and metrics.json."""
        cfg, run_dir, test_data = self.cfg, self.run_dir, self.data.test
        preds = decide(probs, clf.threshold)
        save_outputs(run_dir, self.data, self.log, metrics, preds, probs, cfg.prompt.label_words)
        if cfg.eval.verify_samples and cfg.eval.method == "logits":
            n = min(cfg.eval.verify_samples, len(test_data))
            metrics["reload_check"] = verify_reload(clf, run_dir, test_data.texts[:n], probs[:n], preds[:n],
                                                    self.device, cfg, self.same_batches(n, clf.temperature))
        if cfg.train.report_to:
            self.accelerator.log({f"test/{k}": metrics[k] for k in ("accuracy", "macro_f1", "roc_auc", "ece")
                                  if metrics.get(k) is not None}, step=metrics["train"]["optimizer_steps"])
            self.accelerator.end_training()
        metrics["wall_seconds"] = round(time.perf_counter() - self.started, 1)
        write_json(run_dir / METRICS, metrics)

    def stack(self, metrics: dict, temperature: float, probs: np.ndarray) -> dict:
        """The configured stack on the saved classifier. Its combiner must be fitted on what the
        saved classifier computes: training's own scores where ``llm_scores`` trusts them, else
        the stack rescores."""
        from .stack import stack

        cfg = self.cfg
        self.say(f"stacking with {cfg.stack.baseline}")
        scores = self.llm_scores(metrics, temperature, probs)
        return stack(self.run_dir, cfg.stack.baseline, cfg.stack.pool, device=cfg.model.device, llm_probs=scores,
                     data=self.data)


def check_fits(state: dict, path: Path, model, run_dir: Path) -> None:
    """A checkpoint's adapter and label head must have this run's shapes and label tokens."""
    from peft import get_peft_model_state_dict

    want, have = get_peft_model_state_dict(model), state["adapter"]
    if set(have) != set(want) or any(have[k].shape != want[k].shape for k in want):
        raise damaged(path, run_dir, "its adapter weights do not match lora.r or lora.target_modules")
    head = label_head(model)
    if (head is None) != ("head" not in state) or head is not None and (
            state["head"].shape != head.weight.shape
            or state.get("head_token_ids", head.token_ids.cpu()).tolist() != head.token_ids.tolist()):
        raise damaged(path, run_dir, "its label head does not match lora.head and the label words")


def run(cfg: Config, output_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Train, calibrate, evaluate, save and verify a classifier. Returns metrics.json's content."""
    recipe = Recipe(cfg, Path(output_dir) if output_dir else default_output_dir(), resume)
    try:
        recipe.setup()
        metrics = recipe.finalize(recipe.train())
        # The other processes wait for the main one's saving, so that all close the group together.
        recipe.accelerator.wait_for_everyone()
        return metrics
    finally:
        recipe.cleanup()


def fit(model, tok, prompt: Prompt, train_ids: list[list[int]], train_labels: list[int], cfg: Config,
        accelerator, run_dir: str | Path) -> dict:
    """The training loop alone, on parts built elsewhere (benchmarks/bench_speed.py times it
    against the seed's Trainer); returns the throughput figures."""
    from .data import Sample
    from .prompt import Encoded

    recipe = Recipe(cfg, Path(run_dir), resume=False)
    recipe.accelerator, recipe.device = accelerator, accelerator.device
    recipe.tok, recipe.prompt, recipe.model = tok, prompt, model
    recipe.enc = {"train": Encoded(train_ids, 0), "val": Encoded([], 0)}
    recipe.data = DataBundle(Sample(labels=list(train_labels)), Sample(), Sample(), {})
    recipe.setup_optimizer()
    return recipe.train()
