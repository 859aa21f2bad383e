"""How calibration windows begin and join documents, measured on a real model.

Three framings of the same calibration text, each quantized from the same
float model with the same settings, all scored the same way (as the
model's preprocessor feeds it: `evaluate_perplexity`'s default):

- `plain`: one token stream of the documents joined directly, windows cut
  at random (keras_gptq before issue 11);
- `start`: the same stream, every window begins with the model's start
  token (when its preprocessor adds one);
- `start+separator`: `start`, and documents joined with the tokenizer's end
  token (`GPTQConfig`'s default, `add_start_token="auto"`).

Prints float, RTN and each framing's perplexity, and the fraction of RTN's
perplexity loss each recovers: (RTN - GPTQ) / (RTN - float).

Usage:
    KERAS_BACKEND=jax python benchmarks/calibration_framing.py
    python benchmarks/calibration_framing.py --samples 32 --framings plain,start
"""

import argparse
import time

FRAMINGS = ("plain", "start", "start+separator")


def _load(model_name):
    if model_name == "smollm2":
        from keras_gptq.examples import bundled
        return bundled.load_default_model()
    raise ValueError(f"unknown --model {model_name!r}")


def _dataset(framing, texts, tokenizer):
    """`(dataset, add_start_token)` for one framing."""
    from keras_gptq.model import calibration
    if framing == "start+separator":
        return texts, "auto"
    ids = calibration.token_stream(texts, tokenizer)  # joined directly
    return ids, ("auto" if framing == "start" else False)


def main(argv=None):
    """Runs every framing and prints the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--framings", default=",".join(FRAMINGS))
    args = p.parse_args(argv)

    import keras_gptq
    from keras_gptq.examples import bundled
    from keras_gptq.model import baselines
    from keras_gptq.model import calibration

    texts = bundled.calibration_texts()
    evaluation = bundled.evaluation_texts()
    model = _load(args.model)
    tokenizer = model.preprocessor.tokenizer

    def ppl(m):
        return keras_gptq.evaluate_perplexity(
            m, evaluation, tokenizer, sequence_length=512,
            max_tokens=512 * args.eval_windows + 1)

    print(f"framing as fed: {calibration.model_framing(model, tokenizer)}")
    rows = {"float": ppl(model)}
    originals = baselines.rtn_in_place(model, 4, 128)
    rows["rtn"] = ppl(model)
    baselines.restore_kernels(originals)
    print(f"float {rows['float']:.3f}  RTN {rows['rtn']:.3f}", flush=True)
    seconds = {}
    for framing in args.framings.split(","):
        if framing not in FRAMINGS:
            raise SystemExit(f"unknown framing {framing!r}: {FRAMINGS}")
        if framing != args.framings.split(",")[0]:
            model = _load(args.model)
        dataset, start = _dataset(framing, texts, tokenizer)
        config = keras_gptq.GPTQConfig(
            dataset=dataset, tokenizer=tokenizer, weight_bits=4,
            group_size=128, activation_order=True,
            num_samples=args.samples, sequence_length=args.seq_len,
            add_start_token=start)
        t0 = time.perf_counter()
        keras_gptq.quantize(model, config, verbose=False)
        seconds[framing] = time.perf_counter() - t0
        rows[framing] = ppl(model)
        print(f"{framing}: {rows[framing]:.3f} ({seconds[framing]:.0f} s)",
              flush=True)
    loss = rows["rtn"] - rows["float"]
    print(f"\n{args.model}, 4-bit g128 act-order, {args.samples}x"
          f"{args.seq_len} calibration tokens, scored on "
          f"{args.eval_windows}x512 evaluation tokens as the model is fed\n")
    print("| calibration framing | perplexity | RTN loss recovered |")
    print("|---|---|---|")
    print(f"| float32 | {rows['float']:.3f} | |")
    print(f"| RTN | {rows['rtn']:.3f} | 0% |")
    for framing in seconds:
        recovered = (rows["rtn"] - rows[framing]) / loss
        print(f"| {framing} | {rows[framing]:.3f} | {100 * recovered:.0f}% |")


if __name__ == "__main__":
    main()
