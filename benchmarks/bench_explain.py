"""Word attributions on a trained classifier: the time of one explanation, and the deletion check.

Times ``SentimentClassifier.explain`` on one review that fills the prompt's token budget (192
tokens on the demo), then, on test reviews, compares how far the calibrated probability of the
predicted label falls when the k words the explanation ranks highest are deleted, against k
random words (mean of several draws). Only faithful explanations (completeness within the
tolerance) take part; the others are counted.

    python benchmarks/bench_explain.py runs/demo --dataset ../shared/imdb --n 200

Results go to benchmarks/results/explain-cpu.json with the processor and its flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.data import balanced_indices, label_mapper, load_splits, prepare_split
from sentiment_lora.decision import decide
from sentiment_lora.explain import (
    MAX_STEPS,
    N_STEPS,
    TOLERANCE,
    calibrated_forward,
    deletion_check,
    explain,
    path_ends,
)
from sentiment_lora.precision import this_cpu
from sentiment_lora.spec import ClassifierSpec
from sentiment_lora.storage import write_json

ROOT = Path(__file__).resolve().parents[1]


def sample(clf: SentimentClassifier, dataset: str, n: int, seed: int = 0):
    data_cfg = clf.data_config(dataset)
    raw = load_splits(data_cfg, ["test"])["test"]
    rows = prepare_split(raw, "test", data_cfg, label_mapper(data_cfg, clf.label_words))
    return rows.take(balanced_indices(rows.labels, n, len(clf.label_words), np.random.default_rng(seed)))


def timing(clf: SentimentClassifier, texts: list[str], steps: tuple[int, int], rounds: int) -> dict:
    """Seconds for one full-budget review (the first text whose prompt fills ``max_length``), at
    ``steps[0]`` alone and with the retry at ``steps[1]`` as the defaults run."""
    text = next(t for t in texts if len(clf.encode([t])[0]) >= clf.prompt.cfg.max_length)
    explain(clf, [text], n_steps=steps[0], max_steps=steps[0])  # warm-up: first-call allocations
    out = {"tokens": len(clf.encode([text])[0]), "path": path(clf, text)}
    for name, (first, most) in (("first_try", (steps[0], steps[0])), ("as_shipped", steps)):
        times, used = [], 0
        for _ in range(rounds):
            t = time.perf_counter()
            used = explain(clf, [text], n_steps=first, max_steps=most)[0].n_steps
            times.append(time.perf_counter() - t)
        out[name] = {"n_steps": used, "rounds": [round(x, 2) for x in times],
                     "median_s": round(statistics.median(times), 2)}
    return out


def path(clf: SentimentClassifier, text: str, points: int = 65) -> dict:
    """The calibrated probability of the predicted label at evenly spaced points of integrated
    gradients' straight path, from the baseline to ``text``: how rough the integrand is, which
    sets how many steps the integral needs to meet the tolerance."""
    ids = clf.encode([text])[0]
    ex, eb = path_ends(clf, ids)
    forward, ones = calibrated_forward(clf), torch.ones((1, len(ids)), dtype=torch.long)
    target = int(decide(clf.proba_of_prompts([ids]), clf.threshold)[0])
    with torch.inference_mode():
        probs = [float(forward(eb + float(a) * (ex - eb), ones)[0, target]) for a in np.linspace(0.0, 1.0, points)]
    return {"points": points, "label": clf.label_words[target], "probabilities": [round(p, 4) for p in probs],
            "end_to_end": round(probs[-1] - probs[0], 4),
            "total_variation": round(float(np.abs(np.diff(probs)).sum()), 4)}


def deletion(clf: SentimentClassifier, texts: list[str], k: int, draws: int, steps: tuple[int, int], out: Path,
             result: dict, tolerance: float = TOLERANCE, rows_file: Path | None = None,
             key: dict | None = None) -> dict:
    """The deletion check review by review. Each review's figures go to ``rows_file`` as it
    finishes, and reviews already there under the same ``key`` (classifier, precision, steps,
    tolerance, k, draws) are not explained again, so a long check can be stopped and resumed
    (docs/serving.md has its pace). Random words are drawn from a generator seeded by the review's
    place in the sample, so a resumed check draws what an unbroken one would."""
    done = load_rows(rows_file, key) if rows_file else {}
    for i, text in enumerate(texts):
        sha = hashlib.sha256(text.encode()).hexdigest()
        if done.get(i, {}).get("text_sha256") != sha:
            e = explain(clf, [text], n_steps=steps[0], max_steps=steps[1], tolerance=tolerance)[0]
            pair = deletion_check(clf, e, k, draws, np.random.default_rng([0, i]))
            done[i] = {"i": i, "text_sha256": sha, "abs_delta": abs(e.delta), "n_steps": e.n_steps,
                       "pair": pair, "key": key}
            if rows_file:
                with open(rows_file, "a") as f:
                    f.write(json.dumps(done[i]) + "\n")
        if (i + 1) % 5 == 0 or i + 1 == len(texts):  # partial results survive an interruption
            got = [done[j] for j in range(i + 1)]
            result["deletion"] = {**summary([r["pair"] for r in got if r["pair"] is not None],
                                            [r["abs_delta"] for r in got], k, draws, steps, len(texts)),
                                  "tolerance": tolerance}
            write_json(out, result)
            print(i + 1, json.dumps(result["deletion"]), flush=True)
    return result["deletion"]


def load_rows(rows_file: Path, key: dict) -> dict[int, dict]:
    """Reviews already checked under ``key``; a file of another check is refused, not mixed in."""
    if not rows_file.exists():
        return {}
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    if any(r.get("key") != key for r in rows):
        raise SystemExit(f"{rows_file} holds another check's reviews (another classifier or settings); "
                         "give --rows a new file")
    return {r["i"]: r for r in rows}


def summary(rows, deltas, k: int, draws: int, steps: tuple[int, int], asked: int) -> dict:
    top = np.array([r[0] for r in rows])
    rnd = np.array([r[1] for r in rows])
    diff = top - rnd
    boot = np.random.default_rng(1).choice(diff, (2000, len(diff))).mean(axis=1) if len(diff) else np.zeros(1)
    return {"asked": asked, "explained": len(deltas), "faithful_checked": len(rows), "k": k, "random_draws": draws,
            "n_steps": list(steps), "abs_delta_median": round(float(np.median(deltas)), 4) if deltas else None,
            "abs_delta_p90": round(float(np.quantile(deltas, 0.9)), 4) if deltas else None,
            "mean_drop_top_k": round(float(top.mean()), 4) if len(rows) else None,
            "mean_drop_random_k": round(float(rnd.mean()), 4) if len(rows) else None,
            "top_beats_random": int((diff > 0).sum()),
            "mean_difference_ci95": [round(float(np.quantile(boot, q)), 4) for q in (0.025, 0.975)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a trained classifier (the demo run)")
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared/imdb"))
    ap.add_argument("--n", type=int, default=200, help="test reviews for the deletion check")
    ap.add_argument("--k", type=int, default=5, help="words deleted")
    ap.add_argument("--draws", type=int, default=5, help="random deletions per review")
    ap.add_argument("--n-steps", type=int, default=N_STEPS, help="integral steps of the first try")
    ap.add_argument("--max-steps", type=int, default=MAX_STEPS, help="steps of the retry of an unfaithful one")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest |completeness delta| shown "
                    "(a large value checks every explanation, whatever its delta, by deletion alone)")
    ap.add_argument("--rounds", type=int, default=3, help="timed explanations of the full-budget review (0: none)")
    ap.add_argument("--precision", default=None, help="scoring precision (default: the classifier's)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/explain-cpu.json"))
    ap.add_argument("--rows", default=None, help="each review's deletion figures, kept as it finishes and "
                    "reused by a later run with the same classifier and settings (default: OUT with "
                    ".rows.jsonl for .json)")
    args = ap.parse_args(argv)
    clf = SentimentClassifier.load(args.run_dir, device="cpu", precision=args.precision)
    texts = list(sample(clf, args.dataset, args.n).texts)
    steps = (args.n_steps, max(args.n_steps, args.max_steps))
    result = {"cpu": this_cpu().to_dict(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "precision": clf.precision, "command": "python benchmarks/bench_explain.py " + " ".join(
                  argv or sys.argv[1:]), "timing": timing(clf, texts, steps, args.rounds) if args.rounds else None}
    write_json(args.out, result)
    print(json.dumps(result["timing"]), flush=True)
    spec = ClassifierSpec.load(args.run_dir).to_dict(args.run_dir)  # its checksum names the classifier
    key = {"classifier": spec["checksum"], "precision": clf.precision, "steps": list(steps),
           "tolerance": args.tolerance, "k": args.k, "draws": args.draws}
    rows = Path(args.rows) if args.rows else Path(args.out).with_suffix(".rows.jsonl")
    deletion(clf, texts, args.k, args.draws, steps, Path(args.out), result, args.tolerance, rows, key)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
