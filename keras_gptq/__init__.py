"""keras_gptq: GPTQ post-training weight quantization for Keras 3 and KerasHub."""
