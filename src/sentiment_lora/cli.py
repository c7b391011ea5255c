"""``sentiment-lora``: a thin command line; each verb calls one function of the package."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def format_metric(x) -> str:
    """A metric for printing; undefined ones (ROC-AUC with one class present, NaN) print as n/a."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _train(args) -> int:
    from .checkpoint import FolderState, folder_state, plan_run, run_config
    from .config import load_config
    from .signals import exit_status
    from .storage import check_output_folder

    # Config and run folder are checked before torch is even imported.
    if args.resume:
        if not args.output_dir:
            raise _usage("--resume needs --output-dir, the folder of the interrupted run")
        if args.config:  # ignoring it would train on a config other than the one asked for
            raise _usage("--resume continues with the run's own config.yaml and takes no --config; adjust it "
                         "with --set KEY=VALUE")
        plan_run(args.output_dir, resume=True)
        cfg = run_config(args.output_dir, args.set)
    else:
        cfg = load_config(args.config, args.set)
        args.output_dir = args.output_dir or _default_run_dir()
        plan_run(args.output_dir, resume=False)
    check_output_folder(args.output_dir, "--output-dir", empty=False)
    from .train import run

    try:
        metrics = run(cfg, args.output_dir, resume=args.resume)
    except KeyboardInterrupt as exc:
        if int(os.environ.get("RANK", "0")) != 0:  # one process of several: the main one says it
            return exit_status(exc)
        state = folder_state(args.output_dir)
        if state is FolderState.RESUMABLE:
            print(f"interrupted: {args.output_dir} holds a checkpoint; continue with 'sentiment-lora train "
                  f"--resume --output-dir {args.output_dir}'", file=sys.stderr)
        elif state is FolderState.RESTARTABLE:
            print(f"interrupted before the first checkpoint; run the same command again to start over "
                  f"(or 'sentiment-lora train --resume --output-dir {args.output_dir}', which reuses its "
                  f"config.yaml)", file=sys.stderr)
        elif state is FolderState.FINISHED:
            print(f"interrupted after the run finished; the classifier is complete in {args.output_dir}",
                  file=sys.stderr)
        else:
            print("interrupted before anything was written; run the same command again", file=sys.stderr)
        return exit_status(exc)
    if metrics:
        t = metrics["train"]
        lo, hi = metrics["accuracy_ci95"]
        print(f"accuracy {metrics['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}) on {metrics['n']} test reviews, "
              f"macro F1 {metrics['macro_f1']:.4f}, ROC-AUC {format_metric(metrics['roc_auc'])}, "
              f"ECE {format_metric(metrics['ece'])}")
        print(f"training: {t['train_tokens_per_s']} tokens/s, {t['train_reviews_per_s']} reviews/s, "
              f"peak memory {t['peak_mem_mb']:.0f} MB; scoring: {metrics['eval_reviews_per_s']} reviews/s; "
              f"wall time {metrics['wall_seconds']:.0f} s")
        print(f"saved to {metrics['run_dir']}")
    return 0


def _default_run_dir() -> str:
    from datetime import datetime

    return str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))


def _evaluate(args) -> int:
    from .layout import EVALUATIONS
    from .spec import ClassifierSpec
    from .storage import check_output_folder

    ClassifierSpec.load(args.run_dir)  # a damaged folder is one line before torch loads
    check_output_folder(args.output_dir or Path(args.run_dir) / EVALUATIONS, "--output-dir",
                        empty=args.output_dir is not None)
    from .evaluate import evaluate_run

    m = evaluate_run(args.run_dir, dataset=args.dataset, split=args.split, limit=args.limit, method=args.method,
                     batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                     output_dir=args.output_dir)
    lo, hi = m["accuracy_ci95"]
    print(f"accuracy {m['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}) on {m['n']} reviews of {m['split']}, "
          f"macro F1 {m['macro_f1']:.4f}, ROC-AUC {format_metric(m['roc_auc'])}, {m['reviews_per_s']} reviews/s")
    if m["unparsed"]:
        print(f"{m['unparsed']} answers named no label word (generate method)")
    print(f"written to {m['output_dir']}")
    return 0


def _print_predictions(clf, pairs, as_json: bool) -> None:
    from .errors import printable
    from .predict import output_row
    from .storage import json_text

    for text, (rec, label, probs) in pairs:
        row = output_row(rec, label, probs, clf.label_words)
        if as_json:
            row.pop("row")
            print(json_text({"text": text, **row}))
        else:
            prob = "" if row["prob"] is None else f"{row['prob']:.4f}"
            preview = printable(" ".join((text or "")[:300].split()))  # a preview costs no copy of a long text
            preview = preview if len(preview) <= 70 else preview[:67] + "..."
            print(f"{label or '-'}\t{prob}\t{preview}", flush=False)
    sys.stdout.flush()


def _predict_ray(args) -> int:
    from .cluster import input_paths, predict_ray

    if args.texts:
        raise _usage("--engine ray classifies a dataset: give --file or --dataset, not texts")
    if bool(args.file) == bool(args.dataset):
        raise _usage("--engine ray needs one of --file (a file, folder or glob) and --dataset (a dataset folder)")
    if not args.output:
        raise _usage("--engine ray needs --output, a new folder for the parquet shards")
    paths = input_paths(args.file, args.dataset, args.split)
    device = "cpu" if args.device == "auto" else args.device  # an actor takes a GPU only when asked
    r = predict_ray(args.run_dir, paths, args.output, field=args.field, id_field=args.id_field or "id",
                    batch_size=args.chunk_size or 64, concurrency=args.concurrency, address=args.address,
                    device=device, model_batch_size=args.batch_size)
    print(f"{r['rows']} predictions in {r['shards']} parquet shards in {r['output']} in {r['seconds']:.1f} s "
          f"({args.concurrency} actors)", file=sys.stderr)
    return 0


def _predict(args) -> int:
    from .data import check_text
    from .predict import (
        Record,
        check_input,
        check_records,
        chunked,
        classify_chunk,
        complete_lines,
        iter_records,
        iter_text_lines,
        predict_file,
        prepare_output,
    )
    from .signals import exit_status
    from .spec import ClassifierSpec

    if args.engine == "ray":
        return _predict_ray(args)
    if args.dataset:
        raise _usage("--dataset reads a dataset folder with --engine ray; for one process give --file")
    if args.output and not args.file:
        raise _usage("--output needs --file: predictions of arguments or stdin go to standard output")
    if args.file and args.texts:
        raise _usage("give texts as arguments or with --file, not both")
    # Everything a user can get wrong is checked before the model loads (seconds to minutes).
    if args.file:
        check_input(args.file, args.field, args.id_field, args.max_line_bytes)
        if args.output:
            prepare_output(args.file, args.output, args.field, args.id_field)
        records = None
    elif args.texts:
        records = [Record(i, check_text(t, f"text {i + 1}")) for i, t in enumerate(args.texts)]
    elif not sys.stdin.isatty():
        stdin = getattr(sys.stdin, "buffer", None) or (line.encode() for line in sys.stdin)  # a test's StringIO
        records = check_records(iter_text_lines(stdin, "standard input", args.max_line_bytes), "standard input")
    else:
        raise _usage("no texts given; pass texts as arguments, --file reviews.txt, or lines on stdin")
    ClassifierSpec.load(args.run_dir)

    from .classifier import SentimentClassifier

    clf = SentimentClassifier.load(args.run_dir, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    if args.compile:
        clf.compile()
    chunk_size = args.chunk_size or 1024
    if args.output:
        try:
            r = predict_file(clf, args.file, args.output, args.field, args.id_field, chunk_size,
                             max_line_bytes=args.max_line_bytes)
        except KeyboardInterrupt as exc:
            print(f"interrupted: {complete_lines(args.output)} predictions are in {args.output}; run the same "
                  f"command again to continue", file=sys.stderr)
            return exit_status(exc)
        resumed = f", resumed at row {r['resumed_after']}" if r["resumed_after"] else ""
        empty = (f"; {r['empty']} rows had no readable text (label null, the reason in \"error\")"
                 if r["empty"] else "")
        print(f"{r['rows']} predictions appended to {args.output} in {r['seconds']:.1f} s{resumed}{empty}",
              file=sys.stderr)
        return 0
    if records is None:
        records = iter_records(args.file, args.field, args.id_field, args.max_line_bytes)
    for chunk in chunked(records, chunk_size):
        _print_predictions(clf, zip([r.text for r in chunk], classify_chunk(clf, chunk)), args.json)
    return 0


def _export(args) -> int:
    from .spec import ClassifierSpec
    from .storage import check_output_folder

    ClassifierSpec.load(args.run_dir)
    check_output_folder(args.out_dir, "OUT_DIR")
    from .export import export

    out = export(args.run_dir, args.out_dir, merge=args.merge, dtype=args.dtype)
    kind = "merged model" if args.merge else "adapter + base model"
    print(f"exported {args.run_dir} to {out} ({kind}); load it with SentimentClassifier.load({str(out)!r})")
    return 0


def _serve(args) -> int:
    from .serve import ServeConfig
    from .spec import ClassifierSpec

    cfg = ServeConfig(host=args.host, port=args.port, max_batch_texts=args.max_batch_texts,
                      max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                      max_queue=args.max_queue, request_timeout_s=args.request_timeout,
                      max_texts_per_request=args.max_texts_per_request, max_body_bytes=args.max_body_bytes,
                      api_key=args.api_key if args.api_key is not None else os.environ.get("SENTIMENT_LORA_API_KEY"))
    ClassifierSpec.load(args.run_dir)  # a damaged folder is one line before the server starts
    _check_port(cfg.host, cfg.port)
    from .serve import serve

    serve(args.run_dir, cfg, device=args.device, dtype=args.dtype,
          log_level="info" if args.verbose else "warning")
    return 0


def _stack(args) -> int:
    from .spec import ClassifierSpec

    ClassifierSpec.load(args.run_dir)
    if args.remove:
        if args.pool:
            raise _usage("--remove takes no --pool")
        from .stack import unstack

        unstack(args.run_dir)
        print(f"removed the stack of {args.run_dir}; it classifies with the LLM alone again")
        return 0
    from .stack import stack

    s = stack(args.run_dir, baseline=args.baseline, pool=args.pool, device=args.device)
    print(f"stacked with {args.baseline} trained on {s['baseline_train_rows']} rows; combiner fitted on "
          f"{s['val_n']} validation rows")
    for name, label in (("stack", "stack"), ("llm", "LLM alone"), ("baseline", args.baseline)):
        m = s["test"][name]
        lo, hi = m["accuracy_ci95"]
        print(f"  {label:<9} accuracy {m['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}), "
              f"ECE {format_metric(m.get('ece'))} on {m['n']} test rows")
    print(f"written to {args.run_dir} (classifier.json, stack/, metrics.json[\"stack\"])")
    return 0


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        raise _usage(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None


def _report(args) -> int:
    from .page import write_report
    from .spec import ClassifierSpec

    ClassifierSpec.load(args.run_dir)
    path = write_report(args.run_dir)
    print(f"wrote {path}")
    return 0


def _baseline(args) -> int:
    from .storage import check_output_folder

    if args.kind == "tfidf":
        from .config import load_config

        if not args.dataset and not args.config:
            raise _usage("baseline tfidf needs --dataset (a Hub id or a local folder such as ../shared/imdb) or a "
                         "--config whose data section names one")
        # The config's data section (columns, label values, splits) and label words, when given.
        cfg = load_config(args.config, ([f"data.dataset={args.dataset}"] if args.dataset else []) + args.set)
        out = args.output_dir or f"runs/baseline-tfidf{'-nb' if args.nb else ''}"
        check_output_folder(out, "--output-dir")
        from .baseline import run_tfidf

        m = run_tfidf(cfg.data, out, nb=args.nb, label_words=cfg.prompt.label_words)
    else:
        from .config import load_config

        if args.nb:
            raise _usage("--nb applies to baseline tfidf only")
        if args.dataset:
            args.set = [f"data.dataset={args.dataset}", *args.set]
        cfg = load_config(args.config, args.set)
        out = args.output_dir or "runs/baseline-zero-shot"
        check_output_folder(out, "--output-dir")
        from .baseline import run_zero_shot

        m = run_zero_shot(cfg, out)
    lo, hi = m["accuracy_ci95"]
    print(f"{m['method']}: accuracy {m['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}) on {m['n']} test reviews, "
          f"ROC-AUC {format_metric(m['roc_auc'])}, ECE {format_metric(m['ece'])}")
    if "label_bias" in m:
        print(f"label offsets {m['label_bias']} calibrated on validation; uncalibrated the accuracy is "
              f"{m['accuracy_uncalibrated']:.4f}")
    elif "accuracy_uncalibrated" in m:
        print(f"threshold {m['threshold']:.4f} calibrated on validation; at 0.5 the accuracy is "
              f"{m['accuracy_uncalibrated']:.4f}")
    print(f"written to {m['output_dir']}")
    return 0


def _usage(message: str):
    from .errors import UserError

    return UserError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error, instead of usage + error
        from .errors import printable

        self.exit(2, f"error: {printable(message)} (see '{self.prog} --help')\n")


def _common(default) -> argparse.ArgumentParser:
    """--verbose and --debug; a verb's copy leaves them unset unless given (SUPPRESS), so that
    ``sentiment-lora --debug VERB`` is not undone by the verb's own default."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=default,
                        help="show the libraries' progress bars and warnings")
    common.add_argument("--debug", action="store_true", default=default, help="show the traceback of an unexpected "
                        "error")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sentiment-lora", parents=[_common(False)], description="Fine-tune a decoder LLM with LoRA "
                     "to classify text, evaluate it, and predict with it.")
    common = _common(argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    dtypes = ["auto", "float32", "bfloat16", "float16"]

    p = sub.add_parser("train", parents=[common], help="fine-tune, evaluate and save a classifier")
    p.add_argument("--config", help="YAML preset, e.g. configs/smollm2-cpu.yaml (defaults: the seed's setup)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its dotted path, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--output-dir", help="run folder (default runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output-dir")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", parents=[common], help="re-score a saved classifier on a dataset split")
    p.add_argument("run_dir")
    p.add_argument("--dataset", help="Hub id or local folder (default: the one it was trained on)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=_positive_int, help="balanced seeded sample of N reviews instead of the whole split")
    p.add_argument("--method", choices=["logits", "generate"], help="scoring method (default: the saved one)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", choices=dtypes, default="auto",
                   help="weights dtype (auto: fp32 on CPU; bfloat16 is faster on CPUs with native bf16)")
    p.add_argument("--output-dir", help="where metrics.json and predictions.jsonl go, a new or empty folder "
                   "(default RUN_DIR/evaluations/<split>-<timestamp>)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", parents=[common], help="classify texts given as arguments, in a file, or on stdin")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*")
    p.add_argument("--file", help="texts to classify: .txt (one per line), .jsonl, .csv or .parquet, read as a stream")
    p.add_argument("--output", help="with --file: append one JSON line per input here (OUT.jsonl); an "
                   "interrupted run continues where it stopped")
    p.add_argument("--field", default="text", help="field or column holding the text in .jsonl/.csv/.parquet")
    p.add_argument("--id-field", help="field or column copied to each output line as its id")
    p.add_argument("--chunk-size", type=_positive_int, help="texts read and scored at a time (default 1024)")
    p.add_argument("--max-line-bytes", type=_positive_int, default=10_000_000, help="a longer line (or text) is "
                   "not read: its row gets an error instead (default 10,000,000)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model: faster scoring after a "
                   "warm-up of a minute or two, for large files")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: Ray Data actors, each loading the classifier once, writing "
                        "parquet shards to --output (pip install 'sentiment-lora[ray]')")
    p.add_argument("--dataset", help="with --engine ray: a dataset folder whose --split files are read")
    p.add_argument("--split", default="test", help="with --dataset: the split to classify (default test)")
    p.add_argument("--address", help="with --engine ray: the Ray cluster to join (default: start one here)")
    p.add_argument("--concurrency", type=_positive_int, default=2, help="with --engine ray: actors (default 2)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", choices=dtypes, default="auto",
                   help="weights dtype (auto: fp32 on CPU; bfloat16 is faster on CPUs with native bf16)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", parents=[common],
                       help="write a standalone classifier folder (no base model path, no GGUF needed)")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--merge", action="store_true", help="merge LoRA into the base: a plain transformers model folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype of the exported weights (default float32)")
    p.set_defaults(func=_export)

    p = sub.add_parser("serve", parents=[common], help="serve a classifier over HTTP: API, web page, metrics")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(default: $SENTIMENT_LORA_API_KEY, else no key)")
    p.add_argument("--max-batch-texts", type=_positive_int, help="most texts per model call (default: the "
                   "classifier's eval batch size)")
    p.add_argument("--max-batch-tokens", type=_positive_int, help="most padded tokens per model call (default: "
                   "the classifier's max_batch_tokens, else 8192)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="wait for more texts before scoring (5 ms)")
    p.add_argument("--max-queue", type=_positive_int, default=1024, help="texts waiting before 503 (1024)")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds before a waiting request gets 504")
    p.add_argument("--max-texts-per-request", type=_positive_int, default=64, help="more inputs get 413 (64)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=1_000_000, help="a larger body gets 413 (1 MB)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", choices=dtypes, default="auto", help="weights dtype (auto: fp32 on CPU)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("report", parents=[common], help="write RUN_DIR/report.html (metrics, plots, config, log, "
                       "confident mistakes) for a run")
    p.add_argument("run_dir")
    p.set_defaults(func=_report)

    p = sub.add_parser("stack", parents=[common],
                       help="combine a trained classifier with a TF-IDF model, fitted on its validation sample")
    p.add_argument("run_dir")
    p.add_argument("--baseline", choices=["tfidf", "tfidf-nb"], default="tfidf",
                   help="the bag-of-words model to stack (tfidf-nb: NB-weighted, two classes)")
    p.add_argument("--pool", metavar="DATASET", help="train the TF-IDF model on this dataset's train split, or with "
                   "'all' on the run's whole train split (either less the run's validation and test rows), instead "
                   "of the run's training sample")
    p.add_argument("--remove", action="store_true", help="remove the stack: back to the LLM alone")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_stack)

    p = sub.add_parser("baseline", parents=[common],
                       help="score a baseline: tfidf (logistic regression) or zero-shot (no adapter)")
    p.add_argument("kind", choices=["tfidf", "zero-shot"])
    p.add_argument("--dataset", help="Hub id or local folder (tfidf: required; zero-shot: overrides data.dataset)")
    p.add_argument("--nb", action="store_true", help="tfidf: NB-weighted features (NB-SVM style)")
    p.add_argument("--config", help="the preset whose data section and label words to use (zero-shot: also its "
                   "model, prompt and samples)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--output-dir", help="where metrics.json and predictions.jsonl go, a new or empty folder")
    p.set_defaults(func=_baseline)
    return parser


def _quiet() -> None:
    """Library chatter (progress bars of weight loading, deprecation notes) hides the figures
    users came for, and would make an error more than one line; --verbose brings it back."""
    warnings.filterwarnings("ignore")
    # Read by transformers, datasets and huggingface_hub when first imported; importing them
    # here would cost every command a second or two, even those that fail on their input.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    os.environ.setdefault("ACCELERATE_LOG_LEVEL", "error")
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already (a test, a notebook): env vars come too late
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    from .signals import terminate_as_interrupt

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling `texts` at the first option: `predict RUN --json "text"`
    # leaves "text" over; it belongs to the texts.
    if extra and args.command == "predict" and not any(e.startswith("-") for e in extra):
        args.texts = [*args.texts, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    with _verbosity(args.verbose or args.debug), terminate_as_interrupt():
        return _run(args)


@contextmanager
def _verbosity(verbose: bool) -> Iterator[None]:
    """Libraries quiet unless asked; SENTIMENT_LORA_VERBOSE carries the choice to what quiets a
    library itself (cluster.quiet_ray), for this call only (a test, a notebook calls again)."""
    saved = os.environ.get("SENTIMENT_LORA_VERBOSE")
    if verbose:
        os.environ["SENTIMENT_LORA_VERBOSE"] = "1"
    elif not saved:
        _quiet()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SENTIMENT_LORA_VERBOSE", None)
        else:
            os.environ["SENTIMENT_LORA_VERBOSE"] = saved


def _run(args) -> int:
    """The verb, with every way it can end turned into one line and an exit status."""
    from .errors import UserError, printable
    from .signals import exit_status

    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # each verb writes its outputs atomically, so an interrupt leaves none half-done
        print("interrupted before anything was written; run the same command again", file=sys.stderr)
        return exit_status(exc)
    except OSError as exc:  # a file that vanished, a full disk, a permission: one line, not a traceback
        if args.debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {printable(str(exc.strerror or exc))}{printable(where)}; check the path, its permissions "
              f"and free space", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: say so, and how to see more
        if args.debug:
            raise
        first = (str(exc).splitlines() or [""])[0][:200]
        print(f"internal error: {type(exc).__name__}: {printable(first)}; rerun with --debug and report it",
              file=sys.stderr)
        return 1


def entry() -> None:
    """The console script: ``main``, then exit with its status."""
    code = main()
    if code in (130, 143):
        # After a handled Ctrl-C, CPython can still re-raise SIGINT on its way out (a flag set
        # when the interrupt crossed a C-level eval), turning 143 into a SIGINT death; the
        # files are closed and written atomically, so leave with the status we chose.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
