"""``sentiment-lora predict``: classify texts given as arguments, in a file, or on stdin; or,
with ``--engine ray``, a dataset across Ray Data actors."""

from __future__ import annotations

import sys

from .common import add_input, add_run_dir, add_runtime, add_verb, positive_int, usage


def add(sub, parents: list) -> None:
    p = add_verb(sub, "predict", parents, "classify texts given as arguments, in a file, or on stdin", run,
                 example='sentiment-lora predict runs/demo "A wonderful, moving film." "Two hours I won\'t get back."')
    add_run_dir(p)
    p.add_argument("texts", nargs="*", help="texts to classify (none: --file, or one text per line on stdin)")
    add_input(p)
    p.add_argument("--output", help="with --file: append one JSON line per input here (OUT.jsonl); an "
                   "interrupted run continues where it stopped")
    p.add_argument("--compile", action="store_true", help="torch.compile the model: faster scoring after a "
                   "warm-up of a minute or two, for large files")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--explain", action="store_true", help="JSON lines with each text's words and their push "
                   "toward the label (integrated gradients, docs/serving.md; needs captum)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: Ray Data actors, each loading the classifier once, writing "
                        "parquet shards to --output (pip install 'sentiment-lora[ray]')")
    p.add_argument("--dataset", help="with --engine ray: a dataset folder whose --split files are read")
    p.add_argument("--split", default="test", help="with --dataset: the split to classify")
    p.add_argument("--address", help="with --engine ray: the Ray cluster to join (default: start one here)")
    p.add_argument("--concurrency", type=positive_int, default=2, help="with --engine ray: actors")
    add_runtime(p)


def run(args) -> int:
    if args.engine == "ray":
        if args.explain:
            raise usage("--explain runs in this process; drop --engine ray")
        return run_ray(args)
    records = _records(args)  # everything a user can get wrong, before the model loads
    from ..classifier import SentimentClassifier
    from ..spec import ClassifierSpec

    ClassifierSpec.load(args.run_dir)
    clf = SentimentClassifier.load(args.run_dir, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                   precision=args.precision)
    if args.compile:
        clf.compile()
    if args.output:
        return _to_file(clf, args)
    from ..predict import chunked, classify_chunk, iter_records

    if records is None:
        records = iter_records(args.file, args.field, args.id_field, args.max_line_bytes)
    for chunk in chunked(records, args.chunk_size or 1024):
        explained = explanations(clf, chunk) if args.explain else None
        print_predictions(clf, zip([r.text for r in chunk], classify_chunk(clf, chunk)), args.json or args.explain,
                          explained, with_id=bool(args.id_field))
    return 0


def explanations(clf, chunk) -> list[dict | None]:
    """``explain.Explanation.to_dict`` per record of ``chunk`` (None for one without text)."""
    todo = [i for i, r in enumerate(chunk) if r.text is not None]
    out: list[dict | None] = [None] * len(chunk)
    for i, e in zip(todo, clf.explain([chunk[i].text for i in todo]) if todo else []):
        out[i] = e.to_dict()
    return out


def _records(args):
    """The texts as records (None for a file, read later), after every check that needs no model."""
    from ..data import check_text
    from ..predict import Record, check_input, check_records, iter_text_lines, prepare_output

    if args.dataset:
        raise usage("--dataset reads a dataset folder with --engine ray; for one process give --file")
    if args.explain:
        _check_explain(args)
    if args.output and not args.file:
        raise usage("--output needs --file: predictions of arguments or stdin go to standard output")
    if args.file and args.texts:
        raise usage("give texts as arguments or with --file, not both")
    if args.id_field and not args.file:
        raise usage("--id-field names a field of --file's records; texts given as arguments or on stdin have no "
                    "ids (their order is their id)")
    if args.file:
        check_input(args.file, args.field, args.id_field, args.max_line_bytes)
        if args.output:
            prepare_output(args.file, args.output, args.field, args.id_field)
        return None
    if args.texts:
        return [Record(i, check_text(t, f"text {i + 1}")) for i, t in enumerate(args.texts)]
    if not sys.stdin.isatty():
        stdin = getattr(sys.stdin, "buffer", None) or (line.encode() for line in sys.stdin)  # a test's StringIO
        return check_records(iter_text_lines(stdin, "standard input", args.max_line_bytes), "standard input")
    raise usage("no texts given; pass texts as arguments, --file reviews.txt, or lines on stdin")


def _check_explain(args) -> None:
    """--explain prints JSON lines to standard output, and needs captum: both checked before the model loads."""
    from ..explain import require_captum

    if args.output:
        raise usage("--explain prints to standard output; drop --output (or redirect: > explained.jsonl)")
    require_captum()


def _to_file(clf, args) -> int:
    from ..predict import complete_lines, predict_file
    from ..signals import exit_status

    try:
        r = predict_file(clf, args.file, args.output, args.field, args.id_field, args.chunk_size or 1024,
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


def print_predictions(clf, pairs, as_json: bool, explained: list[dict | None] | None = None,
                      with_id: bool = False) -> None:
    """Standard output's form of ``predict.output_row``: JSON lines (with ``explained``, each
    text's explanation), or label, probability and a one-line preview separated by tabs, after
    the record's id when ``with_id`` (--id-field)."""
    from ..errors import printable
    from ..predict import output_row
    from ..storage import json_text

    for k, (text, (rec, label, probs)) in enumerate(pairs):
        row = output_row(rec, label, probs, clf.label_words, explained[k] if explained else None)
        if as_json:
            row.pop("row")
            print(json_text({"text": text, **row}))
        else:
            prob = "" if row["prob"] is None else f"{row['prob']:.4f}"
            preview = printable(" ".join((text or "")[:300].split()))  # a preview costs no copy of a long text
            preview = preview if len(preview) <= 70 else preview[:67] + "..."
            ident = f"{printable(str(row.get('id', '')))}\t" if with_id else ""  # no id in a record: empty
            print(f"{ident}{label or '-'}\t{prob}\t{preview}", flush=False)
    sys.stdout.flush()


def run_ray(args) -> int:
    from ..cluster import input_paths, predict_ray

    if args.texts:
        raise usage("--engine ray classifies a dataset: give --file or --dataset, not texts")
    if bool(args.file) == bool(args.dataset):
        raise usage("--engine ray needs one of --file (a file, folder or glob) and --dataset (a dataset folder)")
    if not args.output:
        raise usage("--engine ray needs --output, a new folder for the parquet shards")
    paths = input_paths(args.file, args.dataset, args.split)
    device = "cpu" if args.device == "auto" else args.device  # an actor takes a GPU only when asked
    r = predict_ray(args.run_dir, paths, args.output, field=args.field, id_field=args.id_field or "id",
                    batch_size=args.chunk_size or 64, concurrency=args.concurrency, address=args.address,
                    device=device, model_batch_size=args.batch_size, precision=args.precision)
    print(f"{r['rows']} predictions in {r['shards']} parquet shards in {r['output']} in {r['seconds']:.1f} s "
          f"({args.concurrency} actors)", file=sys.stderr)
    return 0
