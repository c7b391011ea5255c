"""``sentiment-lora stack``: combine a classifier with a TF-IDF model, or remove the stack."""

from __future__ import annotations

from ..bagofwords import BASELINES
from .common import add_run_dir, add_runtime, add_verb, format_metric, usage


def add(sub, parents: list) -> None:
    p = add_verb(sub, "stack", parents,
                 "combine a trained classifier with a TF-IDF model, fitted on its validation sample", run,
                 example="sentiment-lora stack runs/demo --baseline tfidf-nb --pool all")
    add_run_dir(p)
    p.add_argument("--baseline", choices=list(BASELINES), default="tfidf",
                   help="the bag-of-words model to stack: word 1-2-gram TF-IDF; for two classes also tfidf-nb "
                   "(NB-weighted) and tfidf-nb-chars (NB-weighted, with character 2-5-grams)")
    p.add_argument("--pool", metavar="DATASET", help="train the TF-IDF model on this dataset's train split, or with "
                   "'all' on the run's whole train split (either less the run's validation and test rows), instead "
                   "of the run's training sample")
    p.add_argument("--dataset", metavar="PATH", help="where the run's dataset is now, when the path it recorded no "
                   "longer resolves (the run folder moved): its validation and test samples are drawn from it again "
                   "(default: the recorded one)")
    p.add_argument("--remove", action="store_true", help="remove the stack: back to the LLM alone")
    add_runtime(p, batch=False, dtype=False)


def run(args) -> int:
    from ..spec import ClassifierSpec

    ClassifierSpec.load(args.run_dir)
    if args.remove:
        return _remove(args)
    from ..stack import stack

    s = stack(args.run_dir, baseline=args.baseline, pool=args.pool, device=args.device, precision=args.precision,
              dataset=args.dataset)
    print(f"stacked with {args.baseline} trained on {s['baseline_train_rows']} rows; combiner fitted on "
          f"{s['val_n']} validation rows")
    for name, label in (("stack", "stack"), ("llm", "LLM alone"), ("baseline", args.baseline)):
        m = s["test"][name]
        lo, hi = m["accuracy_ci95"]
        print(f"  {label:<9} accuracy {m['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}), "
              f"ECE {format_metric(m.get('ece'))} on {m['n']} test rows")
    print(f"written to {args.run_dir} (classifier.json, stack/, metrics.json[\"stack\"])")
    return 0


def _remove(args) -> int:
    from ..stack import unstack

    if args.pool is not None or args.dataset is not None:
        raise usage("--remove takes no --pool or --dataset")
    unstack(args.run_dir)
    print(f"removed the stack of {args.run_dir}; it classifies with the LLM alone again")
    return 0
