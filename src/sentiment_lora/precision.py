"""Narrow arithmetic on CPUs: what the processor offers, which precision each phase uses, and
how a model is put into it. The one owner of the precision rule.

``/proc/cpuinfo`` is read rather than torch's capability string, which does not name AMX; a tiny
bf16 matmul confirms that torch runs what the flags promise. The defaults are chosen per kind
of processor by ``benchmarks/bench_precision.py`` (docs/performance.md has its figures): a
kind is given a narrower default only where that benchmark found it faster with accuracy held.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, require

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
SHOWN = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
# The defaults per kind of processor, as bench_precision.py chose them where it ran (AMX and
# AVX512-BF16 without AMX): bf16 scoring held accuracy and agreement and was the fastest; int8
# (torchao's dynamic int8 linears, run eagerly) agreed less and was slower than bf16; bf16
# autocast training held accuracy but fell short of its speed bound. Kinds not measured (VNNI
# without bf16) keep fp32 until they are.
SCORING_DEFAULT = {"amx": "bf16", "avx512_bf16": "bf16", "vnni": "fp32", "plain": "fp32"}
TRAINING_DEFAULT = {"amx": "no", "avx512_bf16": "no", "vnni": "no", "plain": "no"}
# Scoring batches larger than the configured token budget ran faster in bf16 on AMX tiles
# (bench_precision.py --budgets); elsewhere the configured budget was as fast or faster.
BUDGET_SCALE = {("amx", "bf16"): 2}


@dataclass(frozen=True)
class Cpu:
    """A processor as far as precision goes: its model name and the flags of ``SHOWN`` it has."""

    model: str
    flags: tuple[str, ...] = ()

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def int8(self) -> bool:
        return any(f in self.flags for f in INT8_FLAGS)

    def has_units(self, precision: str) -> bool:
        """Whether this processor has native units for ``precision`` (fp32 always)."""
        return precision == "fp32" or (self.bf16 if precision == "bf16" else self.int8)

    @property
    def kind(self) -> str:
        """amx, avx512_bf16, vnni or plain: the classes the defaults are chosen for."""
        if "amx_bf16" in self.flags:
            return "amx"
        if self.bf16:
            return "avx512_bf16"
        return "vnni" if self.int8 else "plain"

    def to_dict(self) -> dict:
        return {"model": self.model, "flags": list(self.flags), "kind": self.kind}


def parse_cpuinfo(text: str) -> Cpu:
    """The first processor's model name and flags in ``/proc/cpuinfo``'s format."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return Cpu(fields.get("model name") or platform.processor() or "unknown", tuple(f for f in SHOWN if f in flags))


@functools.lru_cache(maxsize=1)
def this_cpu() -> Cpu:
    """This machine's processor; without ``/proc/cpuinfo`` (not Linux) no flags are known, so fp32.
    ``SENTIMENT_LORA_CPUINFO`` names a file to read instead: the tests simulate each kind of
    processor with it, and a user can pin the fp32 defaults with a file that lists no flags."""
    try:
        path = os.environ.get("SENTIMENT_LORA_CPUINFO") or "/proc/cpuinfo"
        cpu = parse_cpuinfo(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return Cpu(platform.processor() or "unknown")
    if cpu.bf16 and not _bf16_runs():
        cpu = Cpu(cpu.model, tuple(f for f in cpu.flags if f not in BF16_FLAGS))
    return cpu


def _bf16_runs() -> bool:
    import torch

    try:
        x = torch.ones(16, 16, dtype=torch.bfloat16)
        return bool((x @ x)[0, 0] == 16)
    except RuntimeError:
        return False


def training_precision(asked: str, device_type: str, cpu: Cpu | None = None, say=None) -> str:
    """Accelerate's mixed_precision for ``train.mixed_precision``: auto follows ``TRAINING_DEFAULT``
    on a CPU (bf16 autocast keeps fp32 master weights and optimizer state, as on a GPU). A CPU
    without units for the precision asked would emulate it, many times slower than fp32, and a
    preset tuned where bf16 pays must still run everywhere: such a CPU trains in fp32 and says
    so. This tool knows no CPU units for fp16."""
    if device_type == "cpu":
        cpu = cpu or this_cpu()
        if asked == "auto":
            return TRAINING_DEFAULT[cpu.kind]
        if asked == "fp16" or (asked == "bf16" and not cpu.bf16):
            if say is not None:
                say(f"train.mixed_precision={asked}: this CPU ({cpu.model}; flags: {', '.join(cpu.flags) or 'none'}) "
                    f"has no {asked} units, so autocast would be emulated, far slower than fp32; training in fp32 "
                    f"(train.mixed_precision=no does so without this line)")
            return "no"
        return asked
    if asked != "auto":
        return asked
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def scoring_precision(asked: str | None, device_type: str, dtype: str = "auto", saved: str = "fp32",
                      cpu: Cpu | None = None, say=None) -> str:
    """The precision a classifier scores in. ``asked`` None keeps the ``saved`` one where this
    CPU has its units (else fp32, said once); auto takes this CPU's default; an explicit choice
    the CPU lacks is an error. Off the CPU, and with an explicit ``dtype``, the weights' dtype rules."""
    if asked is not None and asked not in PRECISIONS:
        raise UserError(f"precision {asked!r} is not known; use {', '.join(PRECISIONS)}")
    if device_type != "cpu" or dtype not in ("auto", "float32"):
        if asked not in (None, "auto", "fp32") and dtype not in ("auto", "float32"):
            raise UserError(f"--dtype {dtype} and --precision {asked} both set the weights' precision; pass one")
        return "fp32"
    cpu = cpu or this_cpu()
    if asked is None:
        if cpu.has_units(saved):
            return saved
        if say is not None:
            say(f"this classifier was calibrated in {saved}, which this CPU ({cpu.model}) lacks; scoring in fp32")
        return "fp32"
    if asked == "auto":
        return SCORING_DEFAULT[cpu.kind]
    if not cpu.has_units(asked):
        raise UserError(f"--precision {asked} needs {' or '.join(BF16_FLAGS if asked == 'bf16' else INT8_FLAGS)}, "
                        f"which this CPU ({cpu.model}) lacks; use --precision auto or fp32")
    return asked


def scoring_budget(tokens: int | None, precision: str, cpu: Cpu | None = None) -> int | None:
    """The padded tokens per scoring batch (``eval.max_batch_tokens``) for ``precision`` on this CPU:
    the configured budget, scaled where ``BUDGET_SCALE`` says a larger one ran faster."""
    if tokens is None:
        return None
    return tokens * BUDGET_SCALE.get(((cpu or this_cpu()).kind, precision), 1)


def hold_frozen_in_bf16(model) -> dict:
    """For bf16 autocast on a CPU: the frozen weight matrices cast to bf16 once for the run, since
    autocast casts a weight that needs no gradient again on every forward. Returns the fp32
    originals, which ``restore_frozen`` puts back before the classifier is tested and saved."""
    import torch

    kept = {}
    for name, p in model.named_parameters():
        if not p.requires_grad and p.dtype == torch.float32 and p.ndim >= 2:
            kept[name] = p.data
            p.data = p.data.to(torch.bfloat16)
    return kept


def restore_frozen(model, kept: dict) -> None:
    params = dict(model.named_parameters())
    for name, data in kept.items():
        params[name].data = data


def apply_precision(model, precision: str):
    """Put a (merged) model into ``precision`` for scoring, in place. bf16 casts the weights, not
    the buffers (rotary frequencies stay fp32); a trained label head stays fp32. int8 quantizes
    every linear layer but the LM head, whose label rows scoring reads in fp32 anyway."""
    import torch

    if precision == "bf16":
        from .model import LabelRows

        kept = {id(p) for m in model.modules() if isinstance(m, LabelRows) for p in m.parameters(recurse=False)}
        for p in model.parameters():
            if id(p) not in kept:
                p.data = p.data.to(torch.bfloat16)
    elif precision == "int8":
        quantization = require("torchao.quantization", "int8", "--precision int8")
        head = model.get_output_embeddings()
        quantization.quantize_(model, quantization.Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda m, fqn: type(m) is torch.nn.Linear and m is not head and "lm_head" not in fqn)
    return model
