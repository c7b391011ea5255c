"""``sentiment-lora report``: (re)build a run's report.html."""

from __future__ import annotations

from .common import add_run_dir, add_verb


def add(sub, parents: list) -> None:
    p = add_verb(sub, "report", parents, "write RUN_DIR/report.html (metrics, plots, config, log, confident "
                 "mistakes) for a run", run, example="sentiment-lora report runs/demo")
    add_run_dir(p)


def run(args) -> int:
    from ..page import redraw_curves, write_report
    from ..spec import ClassifierSpec

    ClassifierSpec.load(args.run_dir)
    redraw_curves(args.run_dir)
    print(f"wrote {write_report(args.run_dir)}")
    return 0
