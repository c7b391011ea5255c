"""``sentiment-lora baseline``: TF-IDF + logistic regression, or the zero-shot base model."""

from __future__ import annotations

from .common import add_config, add_verb, format_metric, usage


def add(sub, parents: list) -> None:
    p = add_verb(sub, "baseline", parents, "score a baseline: tfidf (logistic regression) or zero-shot (no adapter)",
                 run, example="sentiment-lora baseline tfidf --dataset ../shared/imdb --nb")
    p.add_argument("kind", choices=["tfidf", "zero-shot"], help="tfidf: TF-IDF + logistic regression trained on the "
                   "train split; zero-shot: the config's base model without an adapter")
    p.add_argument("--dataset", help="Hub id or local folder (tfidf: required; zero-shot: overrides data.dataset)")
    p.add_argument("--nb", action="store_true", help="tfidf: NB-weighted features (NB-SVM style)")
    p.add_argument("--chars", action="store_true", help="tfidf: character 2-5-grams inside word boundaries beside "
                   "the words (with --nb: the bag-of-words model of stack --baseline tfidf-nb-chars)")
    add_config(p, "the preset whose data section and label words to use (zero-shot: also its model, prompt and "
               "samples)", "override a config field by its dotted path (repeatable); tfidf trains on every row of "
               "the train split unless given --set data.train_size=N")
    p.add_argument("--output-dir", help="where metrics.json and predictions.jsonl go, a new or empty folder "
                   "(default: runs/baseline-KIND)")


def run(args) -> int:
    m = _baseline(args)
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


def _baseline(args) -> dict:
    from ..bagofwords import BagOfWords
    from ..config import load_config
    from ..storage import check_output_folder

    tfidf = args.kind == "tfidf"
    if tfidf and not args.dataset and not args.config:
        raise usage("baseline tfidf needs --dataset (a Hub id or a local folder such as ../shared/imdb) or a "
                    "--config whose data section names one")
    for flag in ("nb", "chars"):
        if getattr(args, flag) and not tfidf:
            raise usage(f"--{flag} applies to baseline tfidf only")
    # tfidf takes the config's data section (columns, label values, splits) and label words, when given.
    cfg = load_config(args.config, ([f"data.dataset={args.dataset}"] if args.dataset else []) + args.set)
    kind = BagOfWords(args.nb, args.chars).name if tfidf else args.kind
    out = args.output_dir or f"runs/baseline-{kind}"
    check_output_folder(out, "--output-dir")
    from ..baseline import run_tfidf, run_zero_shot

    if tfidf:  # a preset's sample size is for the LLM; a size asked for here is the baseline's
        asked = any(s.partition("=")[0].strip() == "data.train_size" for s in args.set)
        return run_tfidf(cfg.data, out, nb=args.nb, label_words=cfg.prompt.label_words,
                         train_size=cfg.data.train_size if asked else None, chars=args.chars)
    return run_zero_shot(cfg, out)
