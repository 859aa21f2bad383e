"""`model.quantize("gptq", config=keras_gptq.GPTQConfig(...))` on a model
created or loaded *before* `import keras_gptq` (a notebook's usual order).

Each case runs in a fresh process, since the import order is the point.
"""

import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(r"""
    import json, os, sys
    import keras
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    from helpers.models import build_causal_lm, markov_tokens
    assert "keras_gptq" not in sys.modules
    # Gemma3 loaded from a preset, Llama3 built in memory, both before the
    # import (Keras's route fails on the former: "Cannot quantize a layer
    # that isn't yet built").
    import keras_hub
    build_causal_lm("gemma3").save_to_preset(sys.argv[1])
    models = {"gemma3": keras_hub.models.CausalLM.from_preset(sys.argv[1]),
              "llama3": build_causal_lm("llama3")}
    import keras_gptq
    from keras_gptq import storage
    result = {}
    for family, model in models.items():
        model.quantize("gptq", config=keras_gptq.GPTQConfig(
            dataset=markov_tokens(4000, seed=1), num_samples=8,
            sequence_length=32, group_size=16, add_start_token=False))
        dense = [l for b in model.backbone.transformer_layers
                 for l in b._flatten_layers() if isinstance(
                     l, (keras.layers.Dense, keras.layers.EinsumDense))]
        result[family] = {"report": hasattr(model, "gptq_report"),
                          "packed": sum(map(storage.is_packed, dense)),
                          "layers": len(dense)}
    print(json.dumps(result))
""")


def test_models_made_before_import_are_quantized_by_keras_gptq(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "preset")],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for family in ("gemma3", "llama3"):
        assert result[family]["report"], family
        assert result[family]["packed"] == result[family]["layers"] == 14


def test_existing_models_keep_keras_behaviour_for_other_configs():
    # Only a keras_gptq.GPTQConfig is rerouted; int8 reaches Keras.
    script = textwrap.dedent(r"""
        import keras
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        import keras_gptq
        model.quantize("int8")
        print(model.layers[0].quantization_mode)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                         text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "int8"
