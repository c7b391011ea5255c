"""``sentiment-lora export``: a standalone classifier folder (no base model path, no GGUF needed)."""

from __future__ import annotations

from .common import add_run_dir, add_verb


def add(sub, parents: list) -> None:
    p = add_verb(sub, "export", parents,
                 "write a standalone classifier folder (no base model path, no GGUF needed)", run,
                 example="sentiment-lora export runs/demo exported/demo --merge")
    add_run_dir(p)
    p.add_argument("out_dir", help="the exported folder, new or empty")
    p.add_argument("--merge", action="store_true", help="merge LoRA into the base: a plain transformers model folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype of the exported weights")
    p.add_argument("--onnx", choices=["fp32", "int8"], default=None,
                   help="write the merged model as an ONNX Runtime graph in this precision; predict, evaluate and "
                        "serve load the folder (int8, dynamic quantization, can cost accuracy: measure it first, "
                        "docs/performance.md)")


def run(args) -> int:
    from ..spec import ClassifierSpec
    from ..storage import check_output_folder

    ClassifierSpec.load(args.run_dir)
    check_output_folder(args.out_dir, "OUT_DIR")
    from ..export import export

    out = export(args.run_dir, args.out_dir, merge=args.merge, dtype=args.dtype, onnx=args.onnx)
    kind = f"ONNX graph, {args.onnx}" if args.onnx else "merged model" if args.merge else "adapter + base model"
    print(f"exported {args.run_dir} to {out} ({kind}); load it with SentimentClassifier.load({str(out)!r})")
    return 0
