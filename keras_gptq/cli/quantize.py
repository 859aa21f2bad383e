"""`keras-gptq quantize`: GPTQ-quantize a model and save it as a preset."""

from keras_gptq.cli import common


def add_parser(subparsers, parent):
    """Adds the `quantize` subcommand."""
    p = subparsers.add_parser(
        "quantize", parents=[parent],
        help="quantize a model with GPTQ and save it as a KerasHub preset.",
        description="Quantize the Dense/EinsumDense layers of a causal LM "
                    "with GPTQ, print the per-layer report and save the "
                    "model with `save_to_preset`.")
    common.add_model_argument(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to save the quantized preset to (an existing "
                        "preset there is replaced only once the new one is "
                        "completely written).")
    common.add_gptq_arguments(p)
    common.add_data_arguments(p, "bundled.calibration_texts()")
    p.set_defaults(command=run)


def run(args):
    """Quantizes `args.preset` with the flags' config; saves `args.out`."""
    import keras_gptq
    model = common.load_model(args.preset)
    config = common.config_from_args(
        args, common.load_data(args.dataset, evaluation=False),
        common.tokenizer_of(model))
    report = keras_gptq.quantize(model, config, verbose=not args.quiet)
    if not args.quiet:
        print(report)
    model.save_to_preset(args.out)
    print(f"Saved the quantized preset to {args.out}")
    return 0
