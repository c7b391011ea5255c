"""``sentiment-lora train``: fine-tune, evaluate and save a classifier."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import add_config, add_verb, format_metric, usage


def add(sub, parents: list) -> None:
    p = add_verb(sub, "train", parents, "fine-tune a decoder LLM with LoRA into a classifier; calibrate, test, save",
                 run,
                 example="sentiment-lora train --config configs/smollm2-cpu.yaml --set data.dataset=../shared/imdb "
                         "--output-dir runs/my-run")
    add_config(p, "YAML preset, e.g. configs/smollm2-cpu.yaml (default: the seed's setup)",
               "override a config field by its dotted path, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--output-dir", help="run folder (default: runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output-dir")


def run(args) -> int:
    from ..data import check_dataset_location
    from ..signals import exit_status, interrupt_in
    from ..storage import check_output_folder

    cfg = _config(args)  # config, dataset and run folder are checked before torch is even imported
    check_output_folder(args.output_dir, "--output-dir", empty=False)
    check_dataset_location(cfg.data)
    from ..train import run as train

    try:
        metrics = train(cfg, args.output_dir, resume=args.resume)
    except BaseException as exc:  # a stop signal, also one a library's lazy import turned into its own error
        stop = interrupt_in(exc)
        if stop is None or (args.debug and not isinstance(exc, KeyboardInterrupt)):
            raise  # --debug shows an error met while stopping: it may be a bug of its own
        _interrupted(args.output_dir)
        return exit_status(stop)
    if metrics:
        _summary(metrics)
    return 0


def _config(args):
    from datetime import datetime

    from ..checkpoint import plan_run, run_config
    from ..config import load_config

    if not args.resume:
        cfg = load_config(args.config, args.set)
        args.output_dir = args.output_dir or str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
        plan_run(args.output_dir, resume=False)
        return cfg
    if not args.output_dir:
        raise usage("--resume needs --output-dir, the folder of the interrupted run")
    if args.config:  # ignoring it would train on a config other than the one asked for
        raise usage("--resume continues with the run's own config.yaml and takes no --config; adjust it "
                    "with --set KEY=VALUE")
    plan_run(args.output_dir, resume=True)
    return run_config(args.output_dir, args.set)


def _interrupted(output_dir: str) -> None:
    """What to run next, by what the interrupted run left (the main process of several says it)."""
    import os

    from ..checkpoint import FolderState, folder_state

    if int(os.environ.get("RANK", "0")) != 0:
        return
    state = folder_state(output_dir)
    if state is FolderState.RESUMABLE:
        message = (f"interrupted: {output_dir} holds a checkpoint; continue with 'sentiment-lora train --resume "
                   f"--output-dir {output_dir}'")
    elif state is FolderState.RESTARTABLE:
        message = (f"interrupted before the first checkpoint; run the same command again to start over (or "
                   f"'sentiment-lora train --resume --output-dir {output_dir}', which reuses its config.yaml)")
    elif state is FolderState.FINISHED:
        message = f"interrupted after the run finished; the classifier is complete in {output_dir}"
    else:
        message = "interrupted before anything was written; run the same command again"
    print(message, file=sys.stderr)


def _summary(metrics: dict) -> None:
    t, (lo, hi) = metrics["train"], metrics["accuracy_ci95"]
    print(f"accuracy {metrics['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}) on {metrics['n']} test reviews, "
          f"macro F1 {metrics['macro_f1']:.4f}, ROC-AUC {format_metric(metrics['roc_auc'])}, "
          f"ECE {format_metric(metrics['ece'])}")
    print(f"training: {t['train_tokens_per_s']} tokens/s, {t['train_reviews_per_s']} reviews/s, "
          f"peak memory {t['peak_mem_mb']:.0f} MB; scoring: {metrics['eval_reviews_per_s']} reviews/s; "
          f"wall time {metrics['wall_seconds']:.0f} s")
    print(f"saved to {metrics['run_dir']}")
