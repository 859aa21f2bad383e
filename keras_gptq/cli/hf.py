"""The `keras-gptq export-hf` and `import-hf` subcommands.

They wrap `keras_gptq.export_hf` and `keras_gptq.load_hf_gptq`; exit codes
and error reporting are those of `keras_gptq.cli.main`.
"""

import os

from keras_gptq.cli import common
from keras_gptq.hf.families import MODULE_NAMES
from keras_gptq.hf.format import EXPORT_FORMATS


def add_parser(subparsers, parent):
    """Adds the `export-hf` and `import-hf` subcommands."""
    p = subparsers.add_parser(
        "export-hf", parents=[parent],
        help="write a quantized preset as a Hugging Face GPTQ folder.",
        description="Write a keras_gptq-quantized KerasHub model (Llama 3, "
                    "GPT-2, Gemma, Gemma 3, Mistral, Qwen2, Qwen3, Mixtral, "
                    "Qwen-MoE, Qwen3-MoE, Phi-3, OPT, Bloom) as "
                    "a Hugging Face GPTQ folder (config.json, "
                    "model.safetensors, tokenizer) for transformers/vLLM "
                    "or, with --module-names gptqmodel, GPTQModel.")
    p.add_argument("preset", metavar="PRESET_OR_FOLDER",
                   help="a keras_gptq preset folder (from `keras-gptq "
                        "quantize`).")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write the Hugging Face checkpoint to.")
    p.add_argument("--format", default="gptq",
                   choices=EXPORT_FORMATS,
                   help="checkpoint_format: gptq (v1, default), gptq_v2, or "
                        "auto (v1 for symmetric, v2 for asymmetric grids).")
    p.add_argument("--module-names", default=MODULE_NAMES[0],
                   choices=MODULE_NAMES,
                   help="transformers (default: the names transformers and "
                        "vLLM read) or gptqmodel (the names GPTQModel "
                        "loads: Mixtral's mlp.experts.N.gate_proj/up_proj/"
                        "down_proj, Phi-3's split gate_proj/up_proj); the "
                        "same for other families.")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR if it is not empty.")
    p.set_defaults(command=export_hf_command)
    p = subparsers.add_parser(
        "import-hf", parents=[parent],
        help="load a Hugging Face GPTQ folder and save it as a preset.",
        description="Load a Hugging Face GPTQ checkpoint (AutoGPTQ, "
                    "GPTQModel, optimum, export-hf) of a supported family "
                    "(see export-hf) and save it as a KerasHub preset.")
    p.add_argument("folder", metavar="HF_FOLDER",
                   help="folder with config.json and *.safetensors.")
    p.add_argument("--out", required=True, metavar="PRESET_DIR",
                   help="folder to save the KerasHub preset to.")
    p.add_argument("--overwrite", action="store_true",
                   help="replace PRESET_DIR if it is not empty.")
    p.set_defaults(command=import_hf_command)


def export_hf_command(args):
    """`keras-gptq export-hf`: writes a Hugging Face GPTQ folder."""
    import keras_gptq
    model = common.load_model(args.preset)
    keras_gptq.export_hf(model, args.out, checkpoint_format=args.format,
                         module_names=args.module_names,
                         overwrite=args.overwrite)
    print(f"Wrote the Hugging Face GPTQ checkpoint to {args.out}")
    return 0


def import_hf_command(args):
    """`keras-gptq import-hf`: loads a Hugging Face GPTQ folder, saves a
    KerasHub preset."""
    import keras_gptq
    if not os.path.isdir(args.folder):
        raise common.CLIError(f"no such folder: {args.folder!r}.")
    if os.path.isdir(args.out) and os.listdir(args.out) and not (
            args.overwrite):
        raise common.CLIError(
            f"{args.out!r} is not empty; pass --overwrite to replace it.")
    model = keras_gptq.load_hf_gptq(args.folder)
    model.save_to_preset(args.out)
    print(f"Saved the KerasHub preset to {args.out}")
    return 0
