"""``sentiment-lora evaluate``: re-score a saved classifier on a dataset split."""

from __future__ import annotations

from pathlib import Path

from .common import add_run_dir, add_runtime, add_verb, format_metric, positive_int


def add(sub, parents: list) -> None:
    p = add_verb(sub, "evaluate", parents, "re-score a saved classifier on a dataset split", run,
                 example="sentiment-lora evaluate runs/demo --dataset ../shared/imdb --split test --limit 200")
    add_run_dir(p)
    p.add_argument("--dataset", help="Hub id or local folder (default: the one it was trained on)")
    p.add_argument("--split", default="test", help="the dataset split to score")
    p.add_argument("--limit", type=positive_int, help="balanced seeded sample of N reviews instead of the whole split")
    p.add_argument("--method", choices=["logits", "generate"], help="scoring method (default: the saved one)")
    add_runtime(p)
    p.add_argument("--output-dir", help="where metrics.json and predictions.jsonl go, a new or empty folder "
                   "(default: RUN_DIR/evaluations/<split>-<timestamp>)")


def run(args) -> int:
    from ..layout import EVALUATIONS
    from ..spec import ClassifierSpec
    from ..storage import check_output_folder

    ClassifierSpec.load(args.run_dir)  # a damaged folder is one line before torch loads
    check_output_folder(args.output_dir or Path(args.run_dir) / EVALUATIONS, "--output-dir",
                        empty=args.output_dir is not None)
    from ..evaluate import evaluate_run

    m = evaluate_run(args.run_dir, dataset=args.dataset, split=args.split, limit=args.limit, method=args.method,
                     batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                     output_dir=args.output_dir, precision=args.precision)
    lo, hi = m["accuracy_ci95"]
    print(f"accuracy {m['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}) on {m['n']} reviews of {m['split']}, "
          f"macro F1 {m['macro_f1']:.4f}, ROC-AUC {format_metric(m['roc_auc'])}, {m['reviews_per_s']} reviews/s "
          f"in {m['precision']}")
    if m["unparsed"]:
        print(f"{m['unparsed']} answers named no label word (generate method)")
    print(f"written to {m['output_dir']}")
    return 0
