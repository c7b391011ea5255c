"""Why integrated gradients need many steps on a review: the calibrated probability of the
predicted label along the straight path from the baseline to the full-budget review that
``bench_explain.py`` times (forward passes only, evenly spaced points), and the derivative along
the path, which the integral's steps sample, from autograd against finite differences of the same
forward pass. A path with several swings needs many steps; a derivative that disagrees with
finite differences would point at the gradients instead.

    python benchmarks/explain_path.py runs/demo --dataset ../shared/imdb --points 129

Results go to benchmarks/results/explain-path-cpu.json with the processor and its flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench_explain import path, sample
from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.decision import decide
from sentiment_lora.explain import calibrated_forward, path_ends
from sentiment_lora.precision import this_cpu
from sentiment_lora.storage import write_json

ROOT = Path(__file__).resolve().parents[1]


def derivatives(clf: SentimentClassifier, text: str, alphas: list[float], h: float = 1e-3) -> list[dict]:
    """d p(label) / d alpha at each point: autograd's gradient dotted with the path's direction
    (what one step of the integral adds up), and the central difference of two forward passes."""
    ids = clf.encode([text])[0]
    ex, eb = path_ends(clf, ids)
    forward = calibrated_forward(clf)
    target = int(decide(clf.proba_of_prompts([ids]), clf.threshold)[0])
    ones = torch.ones((1, len(ids)), dtype=torch.long)
    out = []
    for a in alphas:
        point = (eb + a * (ex - eb)).requires_grad_(True)
        grad, = torch.autograd.grad(forward(point, ones)[0, target], point)
        with torch.no_grad():
            up, down = (float(forward(eb + (a + s) * (ex - eb), ones)[0, target]) for s in (h, -h))
        out.append({"alpha": a, "autograd": round(float((grad * (ex - eb)).sum()), 4),
                    "finite_difference": round((up - down) / (2 * h), 4)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a trained classifier (the demo run)")
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared/imdb"))
    ap.add_argument("--points", type=int, default=129, help="evenly spaced points of the path")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/explain-path-cpu.json"))
    args = ap.parse_args(argv)
    clf = SentimentClassifier.load(args.run_dir, device="cpu")
    clf.model.eval()
    texts = sample(clf, args.dataset, 4).texts  # bench_explain's timing sample
    text = next(t for t in texts if len(clf.encode([t])[0]) >= clf.prompt.cfg.max_length)
    probs = path(clf, text, args.points)
    p = np.array(probs["probabilities"])
    turns = np.flatnonzero(np.diff(np.sign(np.diff(p))) != 0) + 1  # where the path turns back
    result = {"cpu": this_cpu().to_dict(), "threads": torch.get_num_threads(), "precision": clf.precision,
              "command": f"python benchmarks/explain_path.py RUN --points {args.points}",
              "tokens": len(clf.encode([text])[0]), "path": probs,
              "turning_points": [{"alpha": round(float(i / (args.points - 1)), 4), "p": float(p[i])} for i in turns],
              "derivatives": derivatives(clf, text, [0.1, 0.3, 0.5, 0.7, 0.9])}
    write_json(args.out, result)
    print({k: v for k, v in result.items() if k != "path"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
