"""The names of every file and folder sentiment-lora writes, in one place.

A classifier folder (a training run, or an export) holds the spec, the weights and the
figures; a run folder adds what training leaves; ``checkpoints/`` holds an unfinished run's
state. Every module that reads or writes one of these files takes its name from here, so the
layout is changed in one place and ``train`` can tell its own folder from another verb's.
"""

# --- a classifier folder ---------------------------------------------------------------
SPEC = "classifier.json"
"""The classifier's spec (``spec.ClassifierSpec``): written last, so its presence marks a whole folder."""
ADAPTER_DIR = "adapter"
"""The LoRA adapter (peft's files) and a trained label head."""
HEAD_FILE = "label_head.safetensors"
"""The label head's rows, inside ``ADAPTER_DIR``."""
STACK_DIR = "stack"
"""A stack's TF-IDF model (a skops file)."""
BASE_DIR = "base"
"""An unmerged export's copy of the base model."""
MODEL_CARD = "README.md"
"""An export's model card."""
ONNX_FILE = "model.onnx"
"""An ONNX export's graph: prompt tokens in, label logits out (``onnx_graph``)."""

# --- figures, in a run, an export, an evaluation or a baseline -------------------------
CONFIG = "config.yaml"
METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
LLM_SCORES = "llm_scores.json"
"""The LLM's own probabilities on a run's validation and test samples, keyed by each text's
sha256, with the classifier, precision and device kind that scored them: ``stack`` reuses them
on an exact match instead of scoring every review again."""
REPORT = "report.html"
CURVES = "training_curves.png"
CONFUSION = "confusion_matrix.png"
CALIBRATION = "calibration.png"
PLOTS = (CURVES, CONFUSION, CALIBRATION)

# --- what training adds ------------------------------------------------------------------
TRAIN_LOG = "train_log.jsonl"
LOGS = "logs"
"""Experiment trackers' files (train.report_to)."""
EVALUATIONS = "evaluations"
"""``evaluate``'s default output folders, one per evaluation."""
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
PREVIOUS = "previous.pt"
CHECKPOINT_MANIFEST = "manifest.json"
"""Size, sha256 and step of each checkpoint as written: how a torn or changed one is told apart."""

RUN_FILES = frozenset({CONFIG, TRAIN_LOG, METRICS, PREDICTIONS, LLM_SCORES, *PLOTS, ADAPTER_DIR, CHECKPOINTS, SPEC,
                       EVALUATIONS, REPORT, LOGS})
"""Everything a training run writes into its folder; anything else there makes the folder
another's."""
RESULT_FILES = RUN_FILES - {CONFIG, TRAIN_LOG, LOGS, CHECKPOINTS}
"""Written only after training, which has always written the training log by then: results
without it are another verb's (evaluate, baseline), not a run that stopped early."""
FIGURE_FILES = frozenset({SPEC, MODEL_CARD, METRICS, CONFIG, *PLOTS, PREDICTIONS, LLM_SCORES, TRAIN_LOG, REPORT})
"""Files of a classifier folder that are not model weights (a bundled base model's folder may
sit at the folder's root, beside them)."""
