"""`keras-gptq eval`: the perplexity of a model, float or quantized."""

from keras_gptq.cli import common


def add_parser(subparsers, parent):
    """Adds the `eval` subcommand."""
    p = subparsers.add_parser(
        "eval", parents=[parent],
        help="print the perplexity of a model on evaluation text.",
        description="Sliding-window perplexity (disjoint windows) of a "
                    "causal LM, float or quantized.")
    common.add_model_argument(p)
    common.add_data_arguments(p, "bundled.evaluation_texts()")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="use at most N tokens of the data (default: all).")
    p.set_defaults(command=run)


def run(args):
    """Prints the perplexity of `args.preset` on `args.dataset`."""
    import keras

    import keras_gptq
    model = common.load_model(args.preset)
    perplexity = keras_gptq.evaluate_perplexity(
        model, common.load_data(args.dataset, evaluation=True),
        tokenizer=common.tokenizer_of(model), sequence_length=args.seq_len,
        max_tokens=args.max_tokens, verbose=not args.quiet,
        add_start_token=common.start_token_setting(args))
    print(f"perplexity: {perplexity:.4f} (backend {keras.config.backend()})")
    return 0
