"""``sentiment-lora report``: (re)build a run's report.html."""

from __future__ import annotations

from .common import add_run_dir, add_verb


def add(sub, parents: list) -> None:
    p = add_verb(sub, "report", parents, "write RUN_DIR/report.html (metrics, plots, config, log, confident "
                 "mistakes) for a run", run, example="sentiment-lora report runs/demo")
    add_run_dir(p)
    p.add_argument("--explain", action="store_true",
                   help="load the classifier and shade the words of the 10 most confident mistakes by their "
                        "push (integrated gradients: seconds per review on a CPU; needs the explain extra)")


def run(args) -> int:
    from ..page import redraw_curves, write_report
    from ..spec import ClassifierSpec

    spec = ClassifierSpec.load(args.run_dir)
    clf = None
    if args.explain:
        from ..classifier import SentimentClassifier
        from ..explain import require_captum

        require_captum()  # one line before the model loads
        clf = SentimentClassifier.from_spec(spec, args.run_dir)
    redraw_curves(args.run_dir)
    print(f"wrote {write_report(args.run_dir, spec, clf)}")
    return 0
