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
    p.add_argument("--low-memory", action="store_true",
                   help="never hold the whole float model: read its weights "
                        "one transformer block at a time from a KerasHub "
                        "preset or a float Hugging Face folder (same "
                        "integers as without the flag).")
    common.add_gptq_arguments(p)
    common.add_data_arguments(p, "bundled.calibration_texts()")
    p.set_defaults(command=run)


def run(args):
    """Quantizes `args.preset` with the flags' config; saves `args.out`."""
    import keras_gptq
    if args.low_memory:
        return _run_low_memory(args)
    model = common.load_model(args.preset)
    config = common.config_from_args(
        args, common.load_data(args.dataset, evaluation=False),
        common.tokenizer_of(model))
    report = keras_gptq.quantize(model, config, verbose=not args.quiet)
    _finish(args, report)
    model.save_to_preset(args.out)
    print(f"Saved the quantized preset to {args.out}")
    return 0


def low_memory_source(preset):
    """What `--low-memory` reads for `preset`: the converted float Hugging
    Face folder of the CLI's `default` and `qwen2.5-*` models (built once,
    cached), else the preset or folder itself."""
    if preset == common.DEFAULT_MODEL:
        from keras_gptq.examples import bundled
        return bundled.default_model_folder()
    if preset in common.QWEN_MODELS:
        from keras_gptq.examples import qwen
        return qwen.qwen2_5_folder(common.QWEN_MODELS[preset])
    common.check_preset_argument(preset)
    return preset


def _run_low_memory(args):
    """`--low-memory`: `keras_gptq.quantize_preset` on the preset or
    Hugging Face folder."""
    import keras_gptq
    source = low_memory_source(args.preset)
    config = common.config_from_args(
        args, common.load_data(args.dataset, evaluation=False),
        common.preset_tokenizer(source))
    report = keras_gptq.quantize_preset(source, args.out, config,
                                        verbose=not args.quiet)
    _finish(args, report)
    print(f"Saved the quantized preset to {args.out}")
    return 0


def _finish(args, report):
    if not args.quiet:
        print(report)
