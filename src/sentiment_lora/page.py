"""HTML pages of a classifier: the run report (``report.html``) and the serving page.

Both are single files with their images embedded (data URIs), no scripts or fonts from
anywhere else: they open offline, from a file or from the server. The card (what the
classifier is and how well it did) is built once here and shown by both.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from .layout import CALIBRATION, CONFIG, CONFUSION, CURVES, METRICS, PREDICTIONS, REPORT, TRAIN_LOG

PLOTS = ((CURVES, "Training curves"), (CONFUSION, "Confusion matrix"))
"""The card's plots; the reliability diagram stands beside the calibration it checks."""

BASELINE_METHODS = ("tfidf-logreg", "tfidf-nb-logreg", "zero-shot")
"""``metrics.json`` methods of ``sentiment-lora baseline``'s folders, which a report shows beside its run."""

PAGE_TEMPLATE = "page.html.j2"
"""Both pages' markup, style and script: Jinja macros beside this module, edited there."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows


def _num(x, digits: int = 4) -> str:
    """A figure for the page; a missing or non-finite one (an older metrics.json may hold NaN,
    which Python's json reads) is n/a, as an undefined figure is."""
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def _cell(x) -> str:
    """A table cell: text as it is, a non-finite number as n/a."""
    return "n/a" if isinstance(x, float) and not math.isfinite(x) else str(x)


def image_uri(path: Path) -> str | None:
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def _readable(x) -> str:
    """A logged figure rounded for reading (4 significant digits); text and integers as they are."""
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else "n/a"
    return str(x)


def truncated(data: dict) -> list[tuple[str, int, Any]]:
    """(sample, texts cut to the token budget, sample size) as training counted them where it encoded each sample."""
    return [(name, data[f"truncated_{part}"], data.get(f"{part}_sample", "?"))
            for part, name in (("train", "training"), ("val", "validation"), ("test", "test"))
            if isinstance(data.get(f"truncated_{part}"), int)]


def _escape(x) -> str:
    """The template's ``e`` filter: html.escape, whose entities (``&quot;``, ``&#x27;``) the pages have always had."""
    return escape(str(x))


def _pages():
    """The template's macros (``card``, ``report``, ``serving``), callable from Python."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("sentiment_lora", "."), trim_blocks=True, lstrip_blocks=True,
                             autoescape=False, undefined=jinja2.StrictUndefined)
    env.filters.update(e=_escape, num=_num, cell=_cell, readable=_readable)
    env.globals.update(truncated=truncated, calibration_summary=calibration_summary)
    return env.get_template(PAGE_TEMPLATE).module


def facts(run_dir: str | Path, spec=None) -> dict:
    """What the card shows, read from a run (or exported) folder; missing parts are None."""
    from .config import load_config
    from .data import public_dataset
    from .errors import UserError
    from .model import public_model
    from .spec import ClassifierSpec

    run_dir = Path(run_dir)
    if spec is None:
        spec = ClassifierSpec.load(run_dir, verify=False)
    metrics = _read_json(run_dir / METRICS)
    metrics = metrics if isinstance(metrics, dict) else {}
    try:
        cfg = load_config(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else None
    except UserError:
        cfg = None
    b = spec.base_model
    name, gguf = public_model(b.origin if b.bundled and b.origin else b.name_or_path, b.gguf_file)
    dataset = spec.data.get("dataset")
    return {"name": run_dir.resolve().name, "base_model": name, "base_gguf": gguf, "labels": spec.label_words,
            "template": spec.prompt.template, "max_length": spec.prompt.max_length,
            "truncation": spec.prompt.truncation, "threshold": spec.threshold, "method": spec.method,
            "calibration": calibration_facts(spec, metrics),
            "dataset": public_dataset(dataset, run_dir) if dataset else None,
            "lora": dict(cfg.lora.__dict__) if cfg else None,
            "config_yaml": (run_dir / CONFIG).read_text(encoding="utf-8") if cfg else None,
            "metrics": metrics, "data": metrics.get("data") if isinstance(metrics.get("data"), dict) else {},
            "stack": spec.stack.baseline if spec.stack else None}


def calibration_facts(spec, metrics: dict) -> dict:
    """How the probabilities were calibrated (``kind``: temperature, threshold, both, or None where
    the run did not calibrate or predates recording it), T and the threshold as the spec applies
    them, and the log-loss and ECE before and after on validation and test where metrics.json has them."""
    cal = metrics.get("calibration") if isinstance(metrics.get("calibration"), dict) else {}
    kind = cal.get("method") if isinstance(cal.get("method"), str) else None
    if kind is None and spec.temperature != 1.0:
        kind = "temperature"
    parts = {part: cal[part] for part in ("validation", "test") if isinstance(cal.get(part), dict)}
    return {"kind": kind, "temperature": spec.temperature, "threshold": spec.threshold, **parts}


def calibration_summary(c: dict, words: list[str]) -> str:
    """One line on ``calibration_facts``: how the probabilities were calibrated and the decision rule."""
    rule = f"p({words[1]}) ≥ {_num(c['threshold'])}" if len(words) == 2 else "the most probable label"
    t = f"T = {_num(c['temperature'], 3)}"
    return {"temperature": f"temperature scaling, {t}; decision {rule}",
            "threshold": f"threshold fitted on validation: {rule}",
            "both": f"temperature scaling, {t}, then a threshold fitted on validation: {rule}",
            }.get(c["kind"], f"none recorded ({t}); decision {rule}")


def card_html(f: dict, run_dir: str | Path) -> str:
    """The classifier's card: base model, LoRA, data, test metrics with their interval, plots, and
    the calibration beside its reliability diagram."""
    ci = f["metrics"].get("accuracy_ci95")
    plots = [(title, uri) for name, title in PLOTS if (uri := image_uri(Path(run_dir) / name))]
    return _pages().card(f, ci if isinstance(ci, list) and len(ci) == 2 else None, plots,
                         image_uri(Path(run_dir) / CALIBRATION))


def baselines(run_dir: Path, limit: int = 200) -> list[dict]:
    """The test metrics of ``sentiment-lora baseline`` folders beside the run (its parent's first
    ``limit`` entries, so a crowded folder costs a bounded time), each with its folder's name."""
    from .data import public_dataset

    found = []
    try:
        siblings = sorted(p for _, p in zip(range(limit), run_dir.resolve().parent.iterdir()) if p.is_dir())
    except OSError:
        return []
    for folder in siblings:
        m = _read_json(folder / METRICS)
        if isinstance(m, dict) and m.get("method") in BASELINE_METHODS:
            ds = m.get("dataset") if isinstance(m.get("dataset"), str) else None
            found.append({"name": folder.name, "method": m["method"], "n": m.get("n"), "accuracy": m.get("accuracy"),
                          "ci": m.get("accuracy_ci95"), "macro_f1": m.get("macro_f1"),
                          "dataset": public_dataset(ds, folder) if ds else None})
    return found


def confident_mistakes(rows: list[dict], n: int = 10) -> list[dict]:
    """The ``n`` wrong predictions made with the highest probability."""
    wrong = [r for r in rows if r.get("pred") is not None and r.get("pred") != r.get("gold")
             and isinstance(r.get("prob"), (int, float)) and math.isfinite(r["prob"])]
    return sorted(wrong, key=lambda r: -r["prob"])[:n]


def report_html(run_dir: str | Path, spec=None, clf=None) -> str:
    """``report.html``: metrics with intervals, plots, config, training log, confident mistakes
    (with ``clf``, their words shaded: ``explained_mistakes``)."""
    run_dir = Path(run_dir)
    f = facts(run_dir, spec)
    mistakes = confident_mistakes(_jsonl(run_dir / PREDICTIONS))
    return _pages().report(f, card_html(f, run_dir), _jsonl(run_dir / TRAIN_LOG),
                           explained_mistakes(clf, mistakes) if clf is not None else mistakes, baselines(run_dir))


def redraw_curves(run_dir: str | Path) -> bool:
    """Draw a run's training curves again from its training log, so an older run's report gets
    the current figure; False where there is no log (an export, an evaluation)."""
    from .report import plot_training_curves

    log = _jsonl(Path(run_dir) / TRAIN_LOG)
    if log:
        plot_training_curves(log, Path(run_dir) / CURVES)
    return bool(log)


def write_report(run_dir: str | Path, spec=None, clf=None) -> Path:
    from .storage import write_text

    return write_text(Path(run_dir) / REPORT, report_html(run_dir, spec, clf))


# --- word attributions (issue 24): the confident mistakes' words shaded --------------------


def explained_mistakes(clf, mistakes: list[dict]) -> list[dict]:
    """``mistakes`` with ``shaded`` rows (``shading``) for those whose text was saved: only these
    few are explained, and none where captum is missing (the report is written all the same)."""
    from .errors import UserError
    from .explain import require_captum

    todo = [i for i, r in enumerate(mistakes) if isinstance(r.get("text"), str) and r["text"].strip()]
    try:
        require_captum()
    except UserError:
        return mistakes
    out = [dict(r) for r in mistakes]
    for i, e in zip(todo, clf.explain([mistakes[i]["text"] for i in todo]) if todo else []):
        out[i]["shaded"] = shading(e.to_dict())
    return out


def shading(e: dict) -> dict:
    """How ``page.html.j2``'s ``shaded`` macro draws an explanation (``explain.Explanation.to_dict``):
    per word a side (``b`` blue, ``o`` orange, None below a quarter of the strongest push:
    shading every small push would hide the few that decide), a shade
    and a sign. Two labels: blue pushes toward the second label, orange toward the first; more:
    blue toward the predicted label, orange away from it. The serving page's script draws alike."""
    labels, k = e["labels"], e["labels"].index(e["label"])
    flip = -1.0 if len(labels) == 2 and k == 0 else 1.0
    blue, orange = (labels[1], labels[0]) if len(labels) == 2 else (e["label"], "the other labels")
    scores = [flip * (w["score"] or 0.0) for w in e["words"]]
    top = max((abs(x) for x in scores), default=0.0) or 1.0
    words = []
    for w, x in zip(e["words"], scores):
        side = None if abs(x) < 0.25 * top else ("b" if x > 0 else "o")
        words.append({"word": w["word"], "side": side, "alpha": round(0.08 + 0.47 * abs(x) / top, 3),
                      "sign": "+" if x > 0 else "−",
                      "title": f"{x:+.4f} toward {blue}" if w["score"] is not None else ""})
    note = (f"attributions withheld: their completeness error {abs(e['delta']):.3f} exceeds the tolerance "
            f"{e['tolerance']}" if not e["faithful"] else "")
    return {"faithful": e["faithful"], "text": e["text"], "words": words, "blue": blue, "orange": orange,
            "note": note}


# --- end word attributions -----------------------------------------------------------------


def serving_page(run_dir: str | Path, spec=None) -> str:
    """``GET /``: a box for a review, a bar per label with its probability and the time the
    request took, then the classifier's card. Plain HTML and a few lines of script."""
    f = facts(run_dir, spec)
    return _pages().serving(f, card_html(f, run_dir))
