"""``sentiment-lora export``: a classifier folder that stands alone.

The exported folder needs neither the base model's original path nor the GGUF package:
- ``--merge``: LoRA merged into the base (peft's ``merge_and_unload``) and saved as a plain
  transformers model folder, which ``AutoModelForCausalLM.from_pretrained`` loads;
- otherwise: the adapter as trained plus a copy of the base weights in ``base/``.
Both carry ``classifier.json``, the run's metrics and plots, and a model card (README.md),
and both load with ``SentimentClassifier.load``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from pathlib import Path

from .classifier import SentimentClassifier, base_model_config, relocatable_adapter, write_classifier
from .errors import UserError
from .layout import ADAPTER_DIR, BASE_DIR, CALIBRATION, CONFIG, METRICS, MODEL_CARD, ONNX_FILE, PLOTS
from .spec import BaseModelRef, ClassifierSpec
from .storage import read_json, write_dir

COPIED = (METRICS, CONFIG, *PLOTS)


def _origin(spec: ClassifierSpec) -> str:
    b = spec.base_model
    if b.bundled:
        return b.origin or "unknown"
    return f"{b.name_or_path}/{b.gguf_file}" if b.gguf_file else b.name_or_path


def export(run_dir: str | Path, out_dir: str | Path, merge: bool = False, dtype: str = "float32",
           onnx: str | None = None) -> Path:
    """Write a standalone copy of the classifier in ``run_dir`` to ``out_dir`` (which must not exist
    or be empty). The folder appears whole or not at all. ``onnx`` (fp32 or int8) writes the merged
    model as an ONNX Runtime graph in that precision instead of torch weights."""
    from .model import bake_label_head, load_base_model, pick_dtype

    run_dir, out = Path(run_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"export folder {str(out)!r} exists and is not empty; choose another OUT_DIR")
    spec = ClassifierSpec.load(run_dir)
    # The weights leave in ``dtype`` whatever this CPU would score in; the spec keeps its precision.
    clf = SentimentClassifier.from_spec(spec, run_dir, device="cpu", dtype=dtype, precision="fp32")
    clf.torch_only("export")
    if onnx is not None and (spec.method != "logits" or dtype != "float32"):
        raise UserError("--onnx exports the logits method in float32 weights; drop --dtype, and export a "
                        "classifier trained with method logits")
    copied = [name for name in COPIED if _readable(run_dir / name)]
    metrics = read_json(run_dir / METRICS) if METRICS in copied else {}
    origin = _origin(spec)

    def fill(tmp: Path) -> ClassifierSpec:
        """Everything but the report and classifier.json; returns the folder's spec."""
        if onnx is not None:
            new = _onnx_weights(tmp, clf, spec, origin, onnx)
        elif merge:
            bake_label_head(clf.model)  # a trained head becomes the saved LM head's label rows
            clf.model.save_pretrained(tmp)  # load() merged the LoRA weights into the base (merge_and_unload)
            clf.tokenizer.save_pretrained(tmp)
            new = dataclasses.replace(spec, adapter=None, head=None,
                                      base_model=BaseModelRef(".", bundled=True, origin=origin))
        else:
            model_cfg = base_model_config(spec, run_dir, device="cpu", dtype=dtype)
            torch_dtype = pick_dtype(dtype, clf.model.device)
            base = load_base_model(model_cfg, clf.model.device, torch_dtype, clf.tokenizer.pad_token_id)
            base.save_pretrained(tmp / BASE_DIR)
            clf.tokenizer.save_pretrained(tmp / BASE_DIR)
            new = dataclasses.replace(spec, adapter=ADAPTER_DIR if spec.adapter is not None else None,
                                      base_model=BaseModelRef(BASE_DIR, bundled=True, origin=origin))
            if spec.adapter is not None:
                shutil.copytree(run_dir / spec.adapter, tmp / ADAPTER_DIR)
                relocatable_adapter(tmp / ADAPTER_DIR, new)
        if spec.stack is not None:
            (tmp / spec.stack.model_file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / spec.stack.model_file, tmp / spec.stack.model_file)
        for name in copied:
            shutil.copy2(run_dir / name, tmp / name)
        card = model_card(new, metrics, merged=merge or onnx is not None, lora=_lora_settings(run_dir),
                          adds_bos=bool(clf.prompt.lead), root=run_dir, has_reliability=CALIBRATION in copied)
        (tmp / MODEL_CARD).write_text(card, encoding="utf-8")
        return new

    return write_dir(out, lambda tmp: write_classifier(tmp, fill(tmp)))


def _onnx_weights(tmp: Path, clf: SentimentClassifier, spec: ClassifierSpec, origin: str,
                  precision: str) -> ClassifierSpec:
    """The merged model as an ONNX graph (``onnx_graph.write_onnx``) and its tokenizer; the spec
    of a folder that ONNX Runtime scores in ``precision``."""
    from .model import bake_label_head
    from .onnx_graph import write_onnx

    bake_label_head(clf.model)
    write_onnx(clf.model, clf.prompt.label_token_ids, tmp / ONNX_FILE, precision)
    clf.tokenizer.save_pretrained(tmp)
    return dataclasses.replace(spec, adapter=None, head=None, onnx=ONNX_FILE, precision=precision,
                               base_model=BaseModelRef(".", bundled=True, origin=origin))


def _readable(path: Path) -> bool:
    """Whether an optional file of the run folder is whole enough to copy; a damaged one is left
    out with a warning (the classifier does not need it)."""
    from .cache import warn
    from .config import load_config

    if not path.is_file():
        return False
    try:
        if path.suffix == ".json":
            ok = _metrics_shape(read_json(path))
        elif path.suffix == ".yaml":
            ok = load_config(path) is not None
        else:
            ok = _png_whole(path.read_bytes())
    except (OSError, ValueError, UserError):
        ok = False
    if not ok:
        warn(f"{path} is damaged; the export leaves it out")
    return ok


def _png_whole(data: bytes) -> bool:
    """A PNG's signature, then chunks whose CRCs all match, ending with IEND."""
    import struct
    import zlib

    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        end = pos + 12 + length
        if end > len(data) or struct.unpack(">I", data[end - 4:end])[0] != zlib.crc32(kind + body):
            return False
        if kind == b"IEND":
            return end == len(data)
        pos = end
    return False


def _metrics_shape(m) -> bool:
    """metrics.json as a run writes it, as far as the model card reads it."""
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not isinstance(m, dict) or not isinstance(m.get("data", {}), dict) or "n" not in m:
        return False
    if m["n"] == 0:
        return True
    ci = m.get("accuracy_ci95")
    return (number(m["n"]) and number(m.get("accuracy")) and isinstance(ci, list) and len(ci) == 2
            and all(map(number, ci)) and all(m.get(k) is None or number(m[k]) for k in ("macro_f1", "roc_auc", "ece")))


def _lora_settings(run_dir: Path) -> dict | None:
    from .config import load_config

    if not (run_dir / CONFIG).is_file():
        return None
    try:
        return dict(load_config(run_dir / CONFIG).lora.__dict__)
    except (UserError, OSError):
        return None


def _pct(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"  # an older metrics.json may hold NaN


CARD_TEMPLATE = "model_card.md.j2"
"""The model card's text, a Jinja template beside this module: the card is edited there."""


def model_card(spec: ClassifierSpec, metrics: dict, merged: bool, lora: dict | None, adds_bos: bool = False,
               root: Path | None = None, has_reliability: bool = True) -> str:
    """README.md of an exported classifier: what it is, its calibration, how well it does, how to load it
    (with sentiment-lora, and with transformers alone or with peft). ``root``: where a relative dataset path
    was recorded from."""
    import jinja2

    from .data import public_dataset
    from .model import public_model
    from .page import calibration_facts, calibration_summary

    env = jinja2.Environment(loader=jinja2.PackageLoader("sentiment_lora", "."), keep_trailing_newline=True,
                             autoescape=False, undefined=jinja2.StrictUndefined)
    env.filters.update(pct=_pct, pyrepr=repr, zip=zip)
    words = spec.label_words
    rule = f"words[int(probs[1] >= {spec.threshold!r})]" if len(words) == 2 else "words[int(probs.argmax())]"
    base_name, base_gguf = public_model(spec.base_model.origin or "unknown", spec.base_model.gguf_file)
    recorded = spec.data.get("dataset")
    dataset = public_dataset(recorded, *([root] if root else [])) if recorded else "unknown"
    cal = calibration_facts(spec, metrics)
    text = env.get_template(CARD_TEMPLATE).render(
        spec=spec, metrics=metrics, merged=merged, lora=lora, adds_bos=adds_bos, words=words, rule=rule,
        data=metrics.get("data", {}), dataset=dataset, dataset_hub=_hub_id(dataset),
        base_name=base_name, base_gguf=base_gguf, base_hub=_hub_id(base_name), adapter_dir=ADAPTER_DIR,
        calibration_text=calibration_summary(cal, words).replace("≥", ">="), calibrated=cal["kind"] is not None,
        cal_rows=[(part, cal[part]) for part in ("validation", "test") if part in cal],
        has_reliability=has_reliability, head_row=bool(spec.head or (merged and lora and lora.get("head"))))
    return re.sub(r"\n{3,}", "\n\n", text)  # optional parts leave blank lines; Markdown needs one


def _hub_id(name: str) -> bool:
    """Whether a card may name ``name`` in its metadata: an ``owner/name`` Hub id, not a folder."""
    from .data import looks_local

    return name.count("/") == 1 and not looks_local(name)
