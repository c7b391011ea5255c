"""``sentiment-lora``: a thin command line; each verb calls one function of the package."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings


def _num(x) -> str:
    """A metric for printing; undefined ones (ROC-AUC with one class present) print as n/a."""
    return "n/a" if x is None else f"{x:.4f}"


def _train(args) -> int:
    from .config import load_config
    from .train import resume_config, run

    if args.resume:
        if not args.output_dir:
            raise _usage("--resume needs --output-dir, the folder of the interrupted run")
        cfg = resume_config(args.output_dir, args.set)
    else:
        cfg = load_config(args.config, args.set)
    metrics = run(cfg, args.output_dir, resume=args.resume)
    if metrics:
        t = metrics["train"]
        lo, hi = metrics["accuracy_ci95"]
        print(f"accuracy {metrics['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}) on {metrics['n']} test reviews, "
              f"macro F1 {metrics['macro_f1']:.4f}, ROC-AUC {_num(metrics['roc_auc'])}, ECE {_num(metrics['ece'])}")
        print(f"training: {t['train_tokens_per_s']} tokens/s, {t['train_reviews_per_s']} reviews/s, "
              f"peak memory {t['peak_mem_mb']:.0f} MB; scoring: {metrics['eval_reviews_per_s']} reviews/s; "
              f"wall time {metrics['wall_seconds']:.0f} s")
        print(f"saved to {metrics['run_dir']}")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate_run

    m = evaluate_run(args.run_dir, dataset=args.dataset, split=args.split, limit=args.limit, method=args.method,
                     batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                     output_dir=args.output_dir)
    lo, hi = m["accuracy_ci95"]
    print(f"accuracy {m['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}) on {m['n']} reviews of {m['split']}, "
          f"macro F1 {m['macro_f1']:.4f}, ROC-AUC {_num(m['roc_auc'])}, {m['reviews_per_s']} reviews/s")
    if m["unparsed"]:
        print(f"{m['unparsed']} answers named no label word (generate method)")
    print(f"written to {m['output_dir']}")
    return 0


def _print_predictions(clf, pairs, as_json: bool) -> None:
    from .predict import output_row

    for text, (rec, label, probs) in pairs:
        if as_json:
            row = output_row(rec, label, probs, clf.label_words)
            row.pop("row")
            print(json.dumps({"text": text, **row}, ensure_ascii=False))
        else:
            prob = "" if label is None else f"{float(probs[clf.label_words.index(label)]):.4f}"
            preview = " ".join((text or "").split())
            preview = preview if len(preview) <= 70 else preview[:67] + "..."
            print(f"{label or '-'}\t{prob}\t{preview}", flush=False)
    sys.stdout.flush()


def _predict(args) -> int:
    from .predict import (
        Record,
        check_input,
        chunked,
        classify_chunk,
        complete_lines,
        iter_records,
        iter_text_lines,
        predict_file,
        prepare_output,
    )

    if args.chunk_size is not None and args.chunk_size < 1:
        raise _usage("--chunk-size must be 1 or more")
    if args.output and not args.file:
        raise _usage("--output needs --file: predictions of arguments or stdin go to standard output")
    # Everything a user can get wrong is checked before the model loads (tens of seconds).
    if args.file:
        check_input(args.file, args.field, args.id_field)
        if args.output:
            prepare_output(args.file, args.output, args.field, args.id_field)
        records = None
    elif args.texts:
        for i, t in enumerate(args.texts, 1):
            if not t.strip():
                raise _usage(f"text {i} is empty; give non-empty texts to classify")
        records = [Record(i, t) for i, t in enumerate(args.texts)]
    elif not sys.stdin.isatty():
        stdin = getattr(sys.stdin, "buffer", None) or (line.encode() for line in sys.stdin)  # a test's StringIO
        records = iter_text_lines(stdin, "standard input")
    else:
        raise _usage("no texts given; pass texts as arguments, --file reviews.txt, or lines on stdin")

    from .classifier import SentimentClassifier

    clf = SentimentClassifier.load(args.run_dir, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    if args.compile:
        clf.compile()
    chunk_size = args.chunk_size or 1024
    if args.output:
        try:
            r = predict_file(clf, args.file, args.output, args.field, args.id_field, chunk_size)
        except KeyboardInterrupt:
            print(f"interrupted: {complete_lines(args.output)} predictions are in {args.output}; run the same "
                  f"command again to continue", file=sys.stderr)
            return 130
        resumed = f", resumed at row {r['resumed_after']}" if r["resumed_after"] else ""
        empty = (f"; {r['empty']} rows had no readable text (label null, the reason in \"error\")"
                 if r["empty"] else "")
        print(f"{r['rows']} predictions appended to {args.output} in {r['seconds']:.1f} s{resumed}{empty}",
              file=sys.stderr)
        return 0
    if records is None:
        records = iter_records(args.file, args.field, args.id_field)
    seen = 0
    for chunk in chunked(records, chunk_size):
        seen += len(chunk)
        _print_predictions(clf, zip([r.text for r in chunk], classify_chunk(clf, chunk)), args.json)
    if not seen:
        raise _usage("no texts on standard input; pass texts as arguments, --file, or lines on stdin")
    return 0


def _export(args) -> int:
    from .export import export

    out = export(args.run_dir, args.out_dir, merge=args.merge, dtype=args.dtype)
    kind = "merged model" if args.merge else "adapter + base model"
    print(f"exported {args.run_dir} to {out} ({kind}); load it with SentimentClassifier.load({str(out)!r})")
    return 0


def _baseline(args) -> int:
    from .baseline import run_tfidf, run_zero_shot

    if args.kind == "tfidf":
        if not args.dataset:
            raise _usage("baseline tfidf needs --dataset, a Hub id or a local folder such as ../shared/imdb")
        out = args.output_dir or f"runs/baseline-tfidf{'-nb' if args.nb else ''}"
        m = run_tfidf(args.dataset, out, nb=args.nb)
    else:
        from .config import load_config

        if args.dataset:
            args.set = [f"data.dataset={args.dataset}", *args.set]
        m = run_zero_shot(load_config(args.config, args.set), args.output_dir or "runs/baseline-zero-shot")
    lo, hi = m["accuracy_ci95"]
    print(f"{m['method']}: accuracy {m['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}) on {m['n']} test reviews, "
          f"ROC-AUC {_num(m['roc_auc'])}, ECE {_num(m['ece'])}")
    if "accuracy_uncalibrated" in m:
        print(f"threshold {m['threshold']:.4f} calibrated on validation; at 0.5 the accuracy is "
              f"{m['accuracy_uncalibrated']:.4f}")
    print(f"written to {m['output_dir']}")
    return 0


def _usage(message: str):
    from .errors import UserError

    return UserError(message)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error, instead of usage + error
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sentiment-lora", description="Fine-tune a decoder LLM with LoRA "
                                     "to classify text, evaluate it, and predict with it.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune, evaluate and save a classifier")
    p.add_argument("--config", help="YAML preset, e.g. configs/smollm2-cpu.yaml (defaults: the seed's setup)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its dotted path, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--output-dir", help="run folder (default runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output-dir")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="re-score a saved classifier on a dataset split")
    p.add_argument("run_dir")
    p.add_argument("--dataset", help="Hub id or local folder (default: the one it was trained on)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="balanced seeded sample of N reviews instead of the whole split")
    p.add_argument("--method", choices=["logits", "generate"], help="scoring method (default: the saved one)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights dtype (auto: fp32 on CPU; bfloat16 is faster on CPUs with native bf16)")
    p.add_argument("--output-dir", help="where metrics.json and predictions.jsonl go "
                   "(default RUN_DIR/evaluations/<split>-<timestamp>)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="classify texts given as arguments, in a file, or on stdin")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*")
    p.add_argument("--file", help="texts to classify: .txt (one per line), .jsonl, .csv or .parquet, read as a stream")
    p.add_argument("--output", help="with --file: append one JSON line per input here (OUT.jsonl); an "
                   "interrupted run continues where it stopped")
    p.add_argument("--field", default="text", help="field or column holding the text in .jsonl/.csv/.parquet")
    p.add_argument("--id-field", help="field or column copied to each output line as its id")
    p.add_argument("--chunk-size", type=int, help="texts read and scored at a time (default 1024)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model: faster scoring after a "
                   "warm-up of a minute or two, for large files")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights dtype (auto: fp32 on CPU; bfloat16 is faster on CPUs with native bf16)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="write a standalone classifier folder (no base model path, no GGUF needed)")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--merge", action="store_true", help="merge LoRA into the base: a plain transformers model folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype of the exported weights (default float32)")
    p.set_defaults(func=_export)

    p = sub.add_parser("baseline", help="score a baseline: tfidf (logistic regression) or zero-shot (no adapter)")
    p.add_argument("kind", choices=["tfidf", "zero-shot"])
    p.add_argument("--dataset", help="Hub id or local folder (tfidf: required; zero-shot: overrides data.dataset)")
    p.add_argument("--nb", action="store_true", help="tfidf: NB-weighted features (NB-SVM style)")
    p.add_argument("--config", help="zero-shot: the preset whose model, prompt and samples to use")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="zero-shot: config overrides")
    p.add_argument("--output-dir", help="where metrics.json and predictions.jsonl go")
    p.set_defaults(func=_baseline)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling `texts` at the first option: `predict RUN --json "text"`
    # leaves "text" over; it belongs to the texts.
    if extra and args.command == "predict" and not any(e.startswith("-") for e in extra):
        args.texts = [*args.texts, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "limit", None) is not None and args.limit <= 0:
        print("error: --limit must be a positive number", file=sys.stderr)
        return 2
    # Library chatter (progress bars of weight loading, deprecation notes) hides the
    # figures users came for; SENTIMENT_LORA_VERBOSE=1 brings it back.
    if not os.environ.get("SENTIMENT_LORA_VERBOSE"):
        warnings.filterwarnings("ignore")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # datasets reads these when first imported; importing it here would cost every
        # command a second or two, even those that never load a dataset.
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("DATASETS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # huggingface_hub sets its level on import
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that vanished, a full disk, a permission: one line, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
