"""The ONNX form of a classifier: written by ``export --onnx``, scored by ONNX Runtime.

The graph holds exactly what scoring computes (``model.label_logits``): prompt token ids and
attention mask in, the label words' logits at the last position out. Everything around it
(the prompt, temperature, threshold, a stack) stays in ``classifier.json`` and runs as for a
torch classifier, so both forms decide by the same rule. int8 is ONNX Runtime's dynamic
quantization of the graph's matrix products (per output channel), the kept library's own
recipe rather than hand-written kernels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import require

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "label_logits"
KINDS = ("fp32", "int8")
"""The precisions an ONNX export is written in."""


def write_onnx(model, label_ids: list[int], path: Path, precision: str) -> None:
    """``model``'s label logits as an ONNX graph at ``path`` (batch and length dynamic)."""
    import torch

    from .model import label_logits

    require("onnxscript", "onnx", "export --onnx")  # torch's exporter needs it; say so before a long trace
    labels = torch.tensor(label_ids)

    class LabelLogits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return label_logits(self.model, input_ids, attention_mask, labels)

    example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    plain = path.with_name(path.name + ".fp32") if precision == "int8" else path
    with torch.no_grad():
        torch.onnx.export(LabelLogits().eval(), example, str(plain), dynamo=True, external_data=False,
                          input_names=list(INPUTS), output_names=[OUTPUT], verbose=False,
                          dynamic_shapes={name: {0: batch, 1: length} for name in INPUTS})
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(plain), str(path), weight_type=QuantType.QInt8, per_channel=True)
        plain.unlink()


class OnnxScorer:
    """An ONNX Runtime session over ``write_onnx``'s graph, used where a torch model would be."""

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = require("onnxruntime", "onnx", "an ONNX export")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are not the user's concern
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def label_logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Label logits, shape (batch, labels), float32."""
        feed = {INPUTS[0]: input_ids.astype(np.int64), INPUTS[1]: attention_mask.astype(np.int64)}
        return self.session.run([OUTPUT], feed)[0].astype(np.float32)
