"""``SentimentClassifier``: a saved classifier's one owner in memory and on disk.

``load`` / ``from_pretrained`` read a classifier folder (a training run or an export),
``save_pretrained`` writes one; ``predict`` and ``predict_proba`` classify texts. The
folder's ``classifier.json`` is read and written through ``spec.ClassifierSpec`` only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .config import DataConfig, ModelConfig, PromptConfig
from .data import check_text, clean_text
from .decision import UNDECIDED, decide
from .errors import UserError
from .layout import ADAPTER_DIR, HEAD_FILE, MODEL_CARD
from .page import write_report
from .precision import scoring_budget
from .prompt import Prompt
from .quiet import quiet_loading
from .spec import BaseModelRef, ClassifierSpec


def base_model_config(spec: ClassifierSpec, folder: str | Path, device: str = "auto",
                      dtype: str = "auto") -> ModelConfig:
    """Where the spec's base model is on this machine: inside ``folder`` when bundled."""
    b = spec.base_model
    name = str(Path(folder) / b.name_or_path) if b.bundled else b.name_or_path
    return ModelConfig(name_or_path=name, gguf_file=b.gguf_file, device=device, dtype=dtype)


def check_base_model(spec: ClassifierSpec, model_cfg: ModelConfig) -> None:
    """The base model found now must be the one the adapter was trained on."""
    from .model import fingerprint, resolve_path

    want = spec.base_model.fingerprint
    if spec.base_model.bundled or want is None:
        return
    found = Path(resolve_path(model_cfg.name_or_path)).expanduser()
    if not found.exists():
        raise UserError(f"base model {spec.base_model.name_or_path!r} not found on this machine; put it back at "
                        f"that path, or run 'sentiment-lora export' where it exists to get a standalone folder")
    have = fingerprint(model_cfg)
    if have != want:
        raise UserError(f"the base model at {spec.base_model.name_or_path!r} ({str(have)[:19]}...) is not the one "
                        f"this classifier was trained on ({want[:19]}...); restore that model or train again")


def torch_model(spec: ClassifierSpec, folder: Path, model_cfg: ModelConfig, pad_id: int | None,
                precision: str | None, merge: bool):
    """The spec's base model with its adapter (merged unless ``merge`` is False) and label head,
    in the scoring precision chosen for this CPU; returns (model, precision)."""
    from .cache import warn
    from .model import load_adapter, load_base_model, load_label_head, pick_device, pick_dtype
    from .precision import apply_precision, scoring_precision

    device = pick_device(model_cfg.device)
    chosen = scoring_precision(precision, device.type, model_cfg.dtype, spec.precision, say=warn)
    model = load_base_model(model_cfg, device, pick_dtype(model_cfg.dtype, device), pad_id)
    if spec.adapter is not None:
        model = load_adapter(model, folder / spec.adapter)
        if merge:
            model = model.merge_and_unload()
    if spec.head is not None:  # after merging: peft merges its own layers, not this one
        load_label_head(model, folder / spec.head, spec.label_token_ids)
    chosen = chosen if merge or spec.adapter is None else "fp32"  # an adapter to save stays fp32
    return apply_precision(model.eval(), chosen), chosen


def onnx_model(spec: ClassifierSpec, folder: Path, precision: str | None):
    """An ONNX export's scorer; it runs in the precision it was exported in, and no other."""
    from .onnx_graph import OnnxScorer

    if precision not in (None, "auto", spec.precision):
        raise UserError(f"{str(folder)!r} is an ONNX export in {spec.precision}; it scores only in "
                        f"{spec.precision}: drop --precision {precision}, or export the run again")
    return OnnxScorer(folder / spec.onnx), spec.precision


# The only type outside skops's defaults that a stack's file may hold; a file asking to build
# anything else is refused before any of it is built.
STACK_TYPES = frozenset({"sentiment_lora.baseline.NBScaler"})


def save_stack_model(model, path: str | Path) -> Path:
    """A stack's scikit-learn model as a skops file (arrays and a declared tree of types, no pickle)."""
    import skops.io as sio

    from .storage import write_with

    return write_with(path, lambda tmp: sio.dump(model, tmp))


def load_stack_model(path: str | Path):
    """The skops file ``save_stack_model`` wrote; one that would build other types is an error."""
    import skops.io as sio

    try:
        found = set(sio.get_untrusted_types(file=path))
    except Exception as exc:  # skops says "bad zip", "missing schema", ...: the file is not one of ours
        raise UserError(f"{path} is not a readable skops file ({type(exc).__name__}); run sentiment-lora stack "
                        f"again") from None
    if found - STACK_TYPES:
        raise UserError(f"{path} would build types sentiment-lora does not trust ({', '.join(sorted(found))}); "
                        f"it was not written by sentiment-lora stack: run that again")
    return sio.load(path, trusted=sorted(found))


class SentimentClassifier:
    """Base model + LoRA adapter (or merged weights) + prompt + threshold: text in, label out."""

    def __init__(self, model, tokenizer, prompt: Prompt, threshold: float = 0.5, method: str = "logits",
                 batch_size: int = 16, max_new_tokens: int = 5, clean_html: bool = True,
                 spec: ClassifierSpec | None = None, max_batch_tokens: int | None = None, temperature: float = 1.0):
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.threshold = threshold
        self.temperature = temperature
        """Temperature scaling applied to every probability this classifier returns."""
        self.method = method
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_new_tokens = max_new_tokens
        self.clean_html = clean_html
        self.spec = spec
        self.folder: Path | None = None
        """The folder it was loaded from, if any."""
        self.precision = "fp32"
        """The CPU precision its model scores in (``precision.apply_precision``)."""
        self.stack_model = None
        """The TF-IDF model of ``spec.stack``, once loaded (``from_spec`` does it)."""

    @property
    def label_words(self) -> list[str]:
        return list(self.prompt.cfg.label_words)

    @property
    def weights_dtype(self) -> str:
        """What the scoring weights are held in: a torch dtype (``torch.float32``), or ``onnx-int8``."""
        if self.spec is not None and self.spec.onnx is not None:
            return f"onnx-{self.spec.precision}"
        return str(next(self.model.parameters()).dtype)

    def torch_only(self, what: str) -> None:
        """An ONNX export holds no torch model: ``what`` needs the run folder or a torch export."""
        if self.spec is not None and self.spec.onnx is not None:
            raise UserError(f"{what} needs a torch model, and {str(self.folder)!r} is an ONNX export; use the "
                            f"training run's folder or an export without --onnx")

    # --- loading and saving -------------------------------------------------------------

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", dtype: str = "auto", batch_size: int | None = None,
             merge: bool = True, precision: str | None = None) -> SentimentClassifier:
        """A classifier from its folder: a training run, or the output of ``sentiment-lora export``.

        ``merge`` folds the LoRA weights into the base for inference (faster scoring: one matmul
        per layer instead of two; docs/performance.md); ``merge=False`` keeps the adapter separate, as
        ``save_pretrained`` needs, in fp32. ``precision`` (auto, fp32, bf16, int8) is the CPU scoring
        precision; None keeps the one the classifier was calibrated in (``precision.scoring_precision``).
        """
        return cls.from_spec(ClassifierSpec.load(folder), folder, device=device, dtype=dtype, batch_size=batch_size,
                             merge=merge, precision=precision)

    from_pretrained = load

    @classmethod
    @quiet_loading()  # as quiet as the command line: the libraries' progress bars and deprecations stay off
    def from_spec(cls, spec: ClassifierSpec, folder: str | Path, device: str = "auto", dtype: str = "auto",
                  batch_size: int | None = None, merge: bool = True,
                  precision: str | None = None) -> SentimentClassifier:
        from .model import load_tokenizer

        folder = Path(folder)
        if spec.adapter is not None and not (folder / spec.adapter / "adapter_config.json").is_file():
            raise UserError(f"{str(folder)!r} has no {spec.adapter}/adapter_config.json; the run folder is "
                            f"incomplete, train again")
        model_cfg = base_model_config(spec, folder, device, dtype)
        check_base_model(spec, model_cfg)
        tok = load_tokenizer(model_cfg)
        prompt = Prompt(tok, spec.prompt)
        if prompt.label_token_ids != spec.label_token_ids:
            raise UserError(f"the tokenizer of {spec.base_model.name_or_path!r} maps the label words to "
                            f"{prompt.label_token_ids}, the saved classifier to {spec.label_token_ids}: "
                            f"it is not the base model this adapter was trained on")
        if spec.onnx is not None:
            model, chosen = onnx_model(spec, folder, precision)
        else:
            model, chosen = torch_model(spec, folder, model_cfg, tok.pad_token_id, precision, merge)
        clf = cls(model, tok, prompt, threshold=spec.threshold, method=spec.method, temperature=spec.temperature,
                  batch_size=batch_size or spec.batch_size, max_new_tokens=spec.max_new_tokens,
                  clean_html=spec.data.get("clean_html", True), spec=spec,
                  max_batch_tokens=None if batch_size else scoring_budget(spec.max_batch_tokens, chosen))
        clf.folder, clf.precision = folder, chosen
        if spec.stack is not None:
            clf.stack_model = load_stack_model(folder / spec.stack.model_file)
        return clf

    def compile(self) -> SentimentClassifier:
        """Compile the model's forward pass (``torch.compile``, dynamic shapes) for long scoring jobs.

        Compiling costs a warm-up of a minute or two on a CPU, so it pays off only over thousands
        of texts; docs/performance.md has the measured figures and their command.
        """
        import torch

        from .model import scoring_body

        self.torch_only("compiling")
        body = scoring_body(self.model)  # scoring runs the decoder alone, then the label rows
        body.forward = torch.compile(body.forward, dynamic=True)
        return self

    def save_adapter(self, folder: str | Path) -> None:
        """The LoRA weights, and the label head if any, into ``folder/adapter`` (atomically, as a
        whole folder)."""
        from .model import label_head, save_label_head
        from .storage import write_dir

        def save(tmp: Path) -> None:
            self.model.save_pretrained(tmp, save_embedding_layers=False)
            if label_head(self.model) is not None:
                save_label_head(self.model, tmp)
            relocatable_adapter(tmp, self.spec)

        write_dir(Path(folder) / ADAPTER_DIR, save, replace=True)  # the classifier's own part of its folder

    def save_pretrained(self, folder: str | Path) -> None:
        """Adapter, then ``classifier.json`` last: its presence marks a complete folder."""
        if self.spec is None:
            raise ValueError("this classifier has no spec to save; build it with SentimentClassifier.load")
        self.torch_only("save_pretrained")
        if not hasattr(self.model, "peft_config"):
            raise ValueError("this classifier's LoRA weights are merged into the base; load it with merge=False to "
                             "save it, or write a standalone folder with sentiment-lora export")
        base = self.spec.base_model
        if base.bundled and self.folder is not None and Path(folder).resolve() != self.folder.resolve():
            import shutil  # an exported classifier's base model travels with it

            shutil.copytree(self.folder / base.name_or_path, Path(folder) / base.name_or_path, dirs_exist_ok=True)
        spec = dataclasses.replace(self.spec, threshold=self.threshold, temperature=self.temperature,
                                   batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens)
        write_classifier(folder, spec, self, report=False)

    # --- classifying --------------------------------------------------------------------

    def encode(self, texts) -> list[list[int]]:
        """Prompt token ids per text; an empty text is a UserError naming its position."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [check_text(t, f"text {i + 1}") for i, t in enumerate(texts)]
        return self.prompt.encode([clean_text(t, self.clean_html) for t in texts]).input_ids

    def predict_proba(self, texts) -> np.ndarray:
        """Probabilities over the label words, shape (n, labels), columns in label order.

        With the generate method a row is one-hot, or NaN when the answer named no label.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)  # read twice with a stack
        return self.combine(texts, self.proba_of_prompts(self.encode(texts)))

    def combine(self, texts, llm_probs: np.ndarray) -> np.ndarray:
        """The final probabilities from the LLM's (``proba_of_prompts``) for these texts: with a
        stack, the combiner over the LLM's and the TF-IDF model's; else the LLM's unchanged."""
        stack = self.spec.stack if self.spec else None
        if stack is None or len(texts) == 0:
            return llm_probs
        from .decision import stack_features, stack_proba

        base = self.stack_model.predict_proba([self.prompt.clip(clean_text(t, self.clean_html)) for t in texts])
        return stack_proba(stack_features(llm_probs, base), stack.coef, stack.intercept)

    def proba_of_prompts(self, ids: list[list[int]], batch_size: int | None = None) -> np.ndarray:
        """The LLM's probabilities of prompts already encoded by ``encode`` (the server batches
        those, then calls ``combine``)."""
        probs = self._raw_proba(ids, batch_size)
        if self.temperature != 1.0 and self.method != "generate":  # generate's rows are one-hot
            from .decision import apply_temperature

            probs = apply_temperature(probs, self.temperature)
        return probs

    def _raw_proba(self, ids: list[list[int]], batch_size: int | None) -> np.ndarray:
        from .scoring import score, score_generate

        if not ids:
            return np.zeros((0, len(self.label_words)))
        if batch_size is not None:  # the caller has shaped the batch: one model call
            return score(self.model, ids, self.prompt.label_token_ids, self.tokenizer.pad_token_id, batch_size) \
                if self.method != "generate" else score_generate(
                    self.model, self.tokenizer, ids, self.label_words, self.tokenizer.pad_token_id, batch_size,
                    self.max_new_tokens)[0]
        if self.method == "generate":
            return score_generate(self.model, self.tokenizer, ids, self.label_words, self.tokenizer.pad_token_id,
                                  self.batch_size, self.max_new_tokens)[0]
        return score(self.model, ids, self.prompt.label_token_ids, self.tokenizer.pad_token_id, self.batch_size,
                     max_tokens=self.max_batch_tokens)

    def labels_of(self, probs: np.ndarray) -> list[str | None]:
        """Label word per row of probabilities (None where undecided), by ``decision.decide``."""
        return [None if i == UNDECIDED else self.label_words[i] for i in decide(probs, self.threshold)]

    def predict(self, texts, return_proba: bool = False):
        """Label word per text; with ``return_proba``, ``(labels, probabilities)`` from one pass."""
        probs = self.predict_proba(texts)
        labels = self.labels_of(probs)
        return (labels, probs) if return_proba else labels

    def explain(self, texts, n_steps: int | None = None, internal_batch_size: int | None = None) -> list:
        """Why each text got its label: word-level attributions of the calibrated probability of
        the predicted label (``explain.Explanation`` per text; needs captum). See explain.py."""
        from . import explain as ex

        return ex.explain(self, texts, n_steps=n_steps or ex.N_STEPS,
                          internal_batch_size=internal_batch_size or ex.INTERNAL_BATCH,
                          max_steps=n_steps or ex.MAX_STEPS)

    def data_config(self, dataset: str | None = None) -> DataConfig:
        """How the training data was read, so evaluation reads a dataset the same way."""
        d = dict(self.spec.data) if self.spec else {}
        if dataset is not None:
            d["dataset"] = dataset
        keys = ("dataset", "subset", "text_column", "label_column", "label_values", "clean_html", "ordinal")
        return DataConfig(**{k: d[k] for k in keys if k in d}, train_size=None, test_size=None)


def write_classifier(folder: str | Path, spec: ClassifierSpec, clf: SentimentClassifier | None = None,
                     extras: Callable[[Path], None] | None = None, report: bool = True) -> ClassifierSpec:
    """The one writer of a classifier folder (train, stack, export and ``save_pretrained`` use
    it), in the order that keeps it loadable: ``clf``'s LoRA weights and label head; then
    ``extras(folder)``, whatever else the folder gains (outputs, metrics, a card, other weights);
    the report page; and classifier.json, with the sha256 of every model file, last, because
    its presence marks a whole folder. Returns the spec as written."""
    folder = Path(folder)
    if clf is not None:
        clf.save_adapter(folder)
        spec = dataclasses.replace(spec, adapter=ADAPTER_DIR, head=head_path(clf.model))
    if extras is not None:
        extras(folder)
    if report:
        write_report(folder, spec)  # explaining its mistakes costs minutes on a CPU: `report --explain`
    spec.save(folder)
    return spec


def relocatable_adapter(adapter_dir: Path, spec: ClassifierSpec | None) -> None:
    """Make a saved peft adapter folder name its base model as given, not by the local path it
    was loaded from (a cache folder, a site-packages path), so the folder can move."""
    import json

    config = adapter_dir / "adapter_config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    base = spec.base_model if spec else None
    if base is not None:
        data["base_model_name_or_path"] = (base.origin or base.name_or_path) if base.bundled else base.name_or_path
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (adapter_dir / MODEL_CARD).unlink(missing_ok=True)  # peft's template card repeats the local path


def head_path(model) -> str | None:
    """Where ``save_adapter`` puts the model's label head, relative to the folder; None without one."""
    from .model import label_head

    return f"{ADAPTER_DIR}/{HEAD_FILE}" if label_head(model) is not None else None


def spec_for_run(model_cfg: ModelConfig, prompt: Prompt, threshold: float, method: str, batch_size: int,
                 max_new_tokens: int, data: dict, max_batch_tokens: int | None = None,
                 temperature: float = 1.0, head: str | None = None, precision: str = "fp32") -> ClassifierSpec:
    """The spec of a freshly trained classifier; the base model is recorded as given, with its fingerprint."""
    from .model import fingerprint

    return ClassifierSpec(
        base_model=BaseModelRef(model_cfg.name_or_path, model_cfg.gguf_file, fingerprint(model_cfg)),
        prompt=prompt.cfg, label_token_ids=list(prompt.label_token_ids), threshold=threshold,
        temperature=temperature, method=method,
        batch_size=batch_size, max_batch_tokens=max_batch_tokens, max_new_tokens=max_new_tokens, data=data,
        head=head, precision=precision)


# --- the seed notebook's names, kept working -------------------------------------------


def load_model_with_lora(run_dir: str | Path):
    """Seed-compatible loader: returns ``(model, tokenizer)`` of a saved classifier."""
    clf = SentimentClassifier.load(run_dir)
    clf.model.sentiment_classifier = clf  # lets predict_sentiment find the template and threshold
    return clf.model, clf.tokenizer


def predict_sentiment(text: str, model, tokenizer) -> str:
    """Seed-compatible: "Positive" or "Negative" (the saved label words) for one text."""
    clf = getattr(model, "sentiment_classifier", None)
    if clf is None:  # a model loaded some other way: use the seed's prompt and labels
        clf = SentimentClassifier(model, tokenizer, Prompt(tokenizer, PromptConfig()))
    return clf.predict([text])[0]
