"""Accuracy under one fixed protocol: fine-tuned recipes against zero-shot and TF-IDF baselines.

The protocol (change it only together with the results file):
- data: IMDB; balanced samples drawn with seed 42 by ``prepare_data``: 2,000 train reviews,
  a 200-review validation sample carved from the rest of train, and 2,000 test reviews
  (test reviews that also occur in train are dropped before sampling);
- anything tunable (the decision threshold, TF-IDF's C, the choice of recipe) is chosen on
  validation, never on the test sample;
- every method is scored on the same 2,000 test reviews, accuracy with a 95% Wilson interval;
- ``zero_shot``: the preset's base model without an adapter, label-token scoring, threshold
  calibrated on validation;
- ``tfidf`` / ``tfidf_nb``: word unigram+bigram TF-IDF + logistic regression (plain and
  NB-weighted), trained on the whole train split, scored on the test sample and on every
  test review not also in train (24,877 of 25,000);
- ``seed_recipe``: the seed's adapter (LoRA r=8, alpha 16, dropout 0.1 on q_proj/v_proj)
  trained by this package under the offline preset (``configs/smollm2-cpu.yaml``). A fixed
  point of comparison, not a recipe anyone tunes: it runs only when asked
  (``--only seed_recipe`` or ``--all``, 35 minutes here), and otherwise keeps its figures
  from the results file;
- ``best_recipe``: ``configs/smollm2-best.yaml``, trained as ``configs/smollm2-hybrid.yaml`` (the
  same recipe plus a ``stack`` section), so that one training gives both rows: the run's own
  metrics are the LLM alone, its ``stack`` section the hybrid;
- ``hybrid``: the best recipe stacked with the preset's bag-of-words model (trained on the whole train split
  less the validation and test samples) by a logistic regression fitted on the 200 validation
  reviews, reusing the run's own validation and test scores; its minutes are the best recipe's
  plus the stack's. A ``best_recipe`` folder trained without the stack is stacked here instead
  (a copy, scored again).

Each part writes its run folder under ``--work-dir`` and is skipped on a rerun when its
``metrics.json`` is there (``--force`` reruns), so the benchmark can be run in pieces
(``--only``). The summary is rebuilt from what exists in ``--work-dir``; a part with no run
folder there keeps its figures from the results file, ``benchmarks/results/quality-cpu.json``.

    make bench-quality DATA=../shared/imdb
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by file path
from common import QUALITY_PROTOCOL, dataset_record, fresh_folder  # noqa: E402
from sentiment_lora.baseline import fit_tfidf, run_zero_shot  # noqa: E402
from sentiment_lora.config import load_config  # noqa: E402
from sentiment_lora.data import load_full, prepare_data, unseen  # noqa: E402
from sentiment_lora.decision import decide  # noqa: E402
from sentiment_lora.metrics import compute_metrics  # noqa: E402
from sentiment_lora.precision import this_cpu  # noqa: E402
from sentiment_lora.storage import write_json  # noqa: E402
from sentiment_lora.train import run  # noqa: E402

PROTOCOL = QUALITY_PROTOCOL
SEED_ADAPTER = ["lora.r=8", "lora.alpha=16", "lora.dropout=0.1", "lora.target_modules=q_proj,v_proj"]
PARTS = ("zero_shot", "tfidf", "seed_recipe", "best_recipe", "hybrid")
# The seed's adapter is the historical reference row; its figure moves only with the protocol.
DEFAULT_PARTS = tuple(p for p in PARTS if p != "seed_recipe")
RESULTS = Path(__file__).parent / "results"


def _config(preset: str, dataset: str, extra=()):
    # One validation pass at the end (for the threshold): passes during training would only
    # draw the curve, at about a minute each on a CPU.
    return load_config(preset, [f"data.dataset={dataset}", *PROTOCOL, "eval.calibrate=true",
                                "train.eval_steps=0", *extra])


def part_tfidf(dataset: str, work: Path) -> None:
    """Both TF-IDF variants: one fit each on the whole train split, two test sets."""
    cfg = _config("configs/smollm2-cpu.yaml", dataset)
    words = cfg.prompt.label_words
    sample = prepare_data(cfg.data, words).test
    full = load_full(dataset, words)
    for name, nb in (("tfidf", False), ("tfidf_nb", True)):
        started = time.perf_counter()
        model, chosen = fit_tfidf(full["train"], nb)
        out = {}
        for which, test in (("sample", sample), ("full_test", unseen(full["test"], full["train"]))):
            probs = model.predict_proba(test.texts)
            out[which] = compute_metrics(test.labels, decide(probs), probs, words)
        metrics = {**out["sample"], "full_test": out["full_test"], **chosen,
                   "wall_seconds": round(time.perf_counter() - started, 1)}
        write_json(work / name / "metrics.json", metrics)
        print(f"{name}: {metrics['accuracy']:.4f} on the sample, {out['full_test']['accuracy']:.4f} on all "
              f"{out['full_test']['n']} test reviews (C={chosen['C']})", file=sys.stderr)


def run_part(part: str, dataset: str, work: Path) -> None:
    folder = work / part
    if part == "tfidf":
        part_tfidf(dataset, work)
    elif part == "zero_shot":
        run_zero_shot(_config("configs/smollm2-cpu.yaml", dataset), folder)
    elif part == "seed_recipe":
        run(_config("configs/smollm2-cpu.yaml", dataset, SEED_ADAPTER), folder)
    elif part == "best_recipe":
        run(_config("configs/smollm2-hybrid.yaml", dataset), folder)
    elif part == "hybrid":
        from sentiment_lora.stack import stack

        best = work / "best_recipe"
        if not (best / "classifier.json").is_file():
            raise SystemExit("hybrid stacks the best_recipe run: run --only best_recipe first")
        if "stack" in json.loads((best / "metrics.json").read_text()):
            print("hybrid: measured by the best_recipe run", file=sys.stderr)
            return
        recipe = _config("configs/smollm2-hybrid.yaml", dataset).stack
        shutil.copytree(best, folder)
        stack(folder, recipe.baseline, recipe.pool)


def summary(work: Path) -> dict:
    def entry(name):
        path = work / name / "metrics.json"
        if not path.is_file():
            return None
        m = json.loads(path.read_text())
        return {"accuracy": m["accuracy"], "ci95": m["accuracy_ci95"], "n": m["n"], "ece": m.get("ece"),
                "roc_auc": m.get("roc_auc"), "minutes": round(m["wall_seconds"] / 60, 1), **scored_as(m)}

    result = {"protocol": PROTOCOL, "n_train": 2000, "n_val": 200, "n_test": 2000}
    for name in ("zero_shot", "tfidf", "tfidf_nb", "seed_recipe", "best_recipe"):
        result[name] = entry(name)
    result["hybrid"] = hybrid_entry(work)
    for name in ("tfidf", "tfidf_nb"):
        path = work / name / "metrics.json"
        full = json.loads(path.read_text())["full_test"] if path.is_file() else None
        result[f"{name}_full_test"] = full["accuracy"] if full else None
        result[f"{name}_full_test_n"] = full["n"] if full else None
    return result


def scored_as(m: dict) -> dict:
    """How an LLM row's figure was reached: the precision it was scored in and the calibration that
    set its decision (a threshold fitted on validation and temperature scaling label differently)."""
    calibration = m.get("calibration") or {}
    out = {"precision": m.get("precision"), "calibration": calibration.get("method")}
    return {k: v for k, v in out.items() if v is not None}


def stacked_metrics(work: Path) -> dict | None:
    """The metrics of the run that holds the hybrid: the best recipe's (trained with its stack
    section), else the hybrid part's own copy."""
    for path in (work / "best_recipe" / "metrics.json", work / "hybrid" / "metrics.json"):
        m = json.loads(path.read_text()) if path.is_file() else {}
        if "stack" in m:
            return m
    return None


def hybrid_entry(work: Path) -> dict | None:
    """The stack's row, shaped like the others, with its parts on the same test reviews."""
    m = stacked_metrics(work)
    if m is None:
        return None
    s = m["stack"]
    t = s["test"]["stack"]
    return {"accuracy": t["accuracy"], "ci95": t["accuracy_ci95"], "n": t["n"], "ece": t.get("ece"),
            "roc_auc": t.get("roc_auc"), "minutes": round((m["wall_seconds"] + s["wall_seconds"]) / 60, 1),
            "llm_scored_as": scored_as(m),
            "stack_minutes": round(s["wall_seconds"] / 60, 1), "baseline": s["baseline"], "pool": s["pool"],
            "baseline_train_rows": s["baseline_train_rows"],
            "parts": {name: {"accuracy": s["test"][name]["accuracy"], "ci95": s["test"][name]["accuracy_ci95"]}
                      for name in ("llm", "baseline")},
            "val": s["val"], "combiner": s["combiner"]}


def markdown(r: dict) -> str:
    names = {"zero_shot": "SmolLM2-135M zero-shot, threshold calibrated on validation",
             "tfidf": "TF-IDF (1-2 grams) + logistic regression, full train split",
             "tfidf_nb": "NB-weighted TF-IDF + logistic regression, full train split",
             "seed_recipe": "SmolLM2-135M + LoRA, the seed's adapter (q,v; r=8)",
             "best_recipe": "SmolLM2-135M + LoRA, best recipe (configs/smollm2-best.yaml)",
             "hybrid": "best recipe stacked with a bag-of-words model (configs/smollm2-hybrid.yaml)"}
    lines = [f"| method | accuracy on {r['n_test']} test reviews (95% CI) | ECE | minutes |", "|---|---|---|---|"]
    for key, label in names.items():
        e = r.get(key)
        if e is None:
            lines.append(f"| {label} | not run | | |")
            continue
        ece = f"{e['ece']:.3f}" if e.get("ece") is not None else ""
        how = e.get("llm_scored_as") or {k: e[k] for k in ("precision", "calibration") if e.get(k)}
        if how:  # only what the run recorded
            label += f" [{', '.join(how.values())}]"
        lines.append(f"| {label} | {e['accuracy']:.4f} ({e['ci95'][0]:.3f}-{e['ci95'][1]:.3f}) | {ece} | "
                     f"{e['minutes']} |")
    h = r.get("hybrid")
    if h:
        llm, base = h["parts"]["llm"], h["parts"]["baseline"]
        lines.append(f"\nThe hybrid's parts on the same {h['n']} test reviews: the LLM alone {llm['accuracy']:.4f}, "
                     f"{h['baseline']} trained on {h['baseline_train_rows']:,} reviews {base['accuracy']:.4f}; "
                     f"stacking took {h['stack_minutes']} min.")
    for key in ("tfidf", "tfidf_nb"):
        if r.get(f"{key}_full_test") is not None:
            lines.append(f"\n{names[key]}: {r[f'{key}_full_test']:.4f} on all {r.get(f'{key}_full_test_n') or 25000:,} "
                         "test reviews not also in train.")
    return "\n".join(lines)


def measured(work: Path, part: str) -> bool:
    """Whether ``part`` has its figures in ``work``: the hybrid's may sit in the best recipe's
    run (trained with its stack section), where a rerun would only time nothing."""
    return (work / part / "metrics.json").is_file() or (part == "hybrid" and stacked_metrics(work) is not None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="stanfordnlp/imdb")
    ap.add_argument("--work-dir", default="runs/bench-quality", help="run folder of each part")
    ap.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    ap.add_argument("--all", action="store_true", help="also run seed_recipe (the seed's adapter, 35 min)")
    ap.add_argument("--force", action="store_true", help="rerun parts that already have results")
    ap.add_argument("--output", default=str(RESULTS / "quality-cpu.json"))
    args = ap.parse_args(argv)
    work = Path(args.work_dir)
    started, ran = time.perf_counter(), []
    for part in args.only or (PARTS if args.all else DEFAULT_PARTS):
        if measured(work, part) and not args.force:
            print(f"{part}: already measured in {work / part}; --force reruns it", file=sys.stderr)
            continue
        ran.append(part)
        for name in (part, *(["tfidf_nb"] if part == "tfidf" else [])):
            fresh_folder(work, name, "bench_quality.py")
        print(f"{part}: running", file=sys.stderr)
        run_part(part, args.dataset, work)
    out = Path(args.output)
    result = summary(work)
    # Parts measured in another work folder (or session) keep their figures from the results file.
    previous = json.loads(out.read_text()) if out.is_file() else {}
    result.update({k: v for k, v in previous.items() if result.get(k) is None and v is not None})
    minutes = round((time.perf_counter() - started) / 60, 1)
    if ran:
        # The wall time of this invocation, so a whole run's total is on record, not a sum.
        result["last_run"] = {"parts": ran, "minutes": minutes}
    result["cpu"] = this_cpu().to_dict()  # the machine of this invocation
    result["dataset"] = dataset_record(args.dataset)
    print(markdown(result))
    print(f"bench-quality: {minutes} minutes for {', '.join(ran) or 'no part'}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
