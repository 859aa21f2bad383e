"""Beyond memory, simulated: quantize a random-init Llama of a large shape
block by block from a Hugging Face folder on disk.

Writes (once) a float Hugging Face folder of a random-init Llama of
`--shape` (`llama2-7b`: 32 layers, width 4096, MLP 11008, 32 heads,
vocabulary 32000, 6.7e9 parameters) in bfloat16 (13.5 GB for 7B; float32
would be 27 GB), one safetensors file per block, into `--folder`. Then, in
a fresh process, `keras_gptq.quantize_preset(folder, out, config)` quantizes
it with `--samples` x `--seq-len` random token windows (4-bit, group
`--group-size` (128), act-order), and the row reports the wall time, the
per-stage split, the peak RSS (sampled every 20 ms) and the sizes on disk. The weights are
random (their values only have to be finite and varied), so this measures
time and memory, not quality.

Usage:
    KERAS_BACKEND=jax python benchmarks/large_model.py --shape llama2-7b \\
        --folder /big/disk/llama2-7b-random [--samples 4 --seq-len 128]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _worker  # noqa: E402

SHAPES = {
    "llama2-7b": dict(num_hidden_layers=32, hidden_size=4096,
                      intermediate_size=11008, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=256),
}
_NOISE = 1 << 20  # values of the random buffer every tensor is cut from


def hf_config(shape):
    """The `config.json` of a Llama of `shape` (a key of `SHAPES`)."""
    return dict(SHAPES[shape], model_type="llama",
                architectures=["LlamaForCausalLM"], hidden_act="silu",
                rms_norm_eps=1e-5, rope_theta=10000.0,
                max_position_embeddings=4096, tie_word_embeddings=False,
                torch_dtype="bfloat16")


def tensor_shapes(config, layer):
    """`{name: shape}` of block `layer` (None: the tensors outside)."""
    h, f = config["hidden_size"], config["intermediate_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    if layer is None:
        return {"model.embed_tokens.weight": (config["vocab_size"], h),
                "model.norm.weight": (h,),
                "lm_head.weight": (config["vocab_size"], h)}
    p = f"model.layers.{layer}."
    return {p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f)}


def _bf16(values):
    """float32 values as bfloat16 bit patterns (round to nearest even)."""
    bits = np.asarray(values, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path, shapes, noise, offset):
    """Writes `shapes`' tensors to `path` in bfloat16, each cut from the
    cyclic `noise` buffer (norm weights near 1, matrices 0.02-scaled);
    returns the next offset into `noise`."""
    header, start = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [start, start + size]}
        start += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, shape in shapes.items():
            count = int(np.prod(shape))
            index = (offset + np.arange(count)) % len(noise)
            offset = (offset + count * 7919) % len(noise)
            values = noise[index] * (1.0 if len(shape) == 1 else 0.02)
            if len(shape) == 1:
                values = 1.0 + 0.1 * values
            f.write(_bf16(values).tobytes())
    os.replace(path + ".tmp", path)
    return offset


def write_folder(shape, folder):
    """Writes the random-init folder once (a `complete` marker ends it)."""
    marker = os.path.join(folder, "complete")
    if os.path.isfile(marker):
        return
    os.makedirs(folder, exist_ok=True)
    config = hf_config(shape)
    noise = np.random.default_rng(0).standard_normal(_NOISE).astype(
        np.float32)
    offset = write_safetensors(os.path.join(folder, "outside.safetensors"),
                               tensor_shapes(config, None), noise, 0)
    for layer in range(config["num_hidden_layers"]):
        offset = write_safetensors(
            os.path.join(folder, f"layer-{layer:03d}.safetensors"),
            tensor_shapes(config, layer), noise, offset)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(marker, "w") as f:
        f.write("ok\n")


def worker(args):
    """Quantizes the folder block by block; writes the row as JSON."""
    import psutil

    import keras_gptq
    runtime = psutil.Process().memory_info().rss / 2**20
    with open(os.path.join(args.folder, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    tokens = np.random.default_rng(1).integers(
        0, vocab, (args.samples, args.seq_len)).astype(np.int32)
    config = keras_gptq.GPTQConfig(
        dataset=tokens, weight_bits=4, group_size=args.group_size,
        activation_order=True,
        num_samples=args.samples, sequence_length=args.seq_len,
        add_start_token=False)
    out = os.path.join(args.out_root, "quantized")
    sampler = _worker.PeakSampler()
    sampler.start()
    start = time.perf_counter()
    report = keras_gptq.quantize_preset(args.folder, out, config,
                                        verbose=False)
    seconds = time.perf_counter() - start
    row = dict(method="low-memory-hf", runtime_mb=runtime,
               peak_rss_mb=sampler.stop() / 2**20, seconds=seconds,
               stages=report.stage_seconds(), layers=len(report.layers),
               preset_mb=_worker.dir_mb(out),
               load_avg=os.getloadavg()[0])
    with open(args.result, "w") as f:
        json.dump(row, f)


def main(argv=None):
    """Writes the folder if needed, quantizes it in a fresh process and
    prints the row."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="llama2-7b")
    p.add_argument("--folder", required=True,
                   help="where the random float folder is (written once)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--out-root", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    start = time.perf_counter()
    write_folder(args.shape, args.folder)
    print(f"folder: {args.folder}, {_worker.dir_mb(args.folder):.0f} MB "
          f"(written or found in {time.perf_counter() - start:.0f} s)")
    with tempfile.TemporaryDirectory(
            dir=os.path.dirname(os.path.abspath(args.folder))) as root:
        row = _worker.run_worker(__file__, "low-memory-hf", [
            "--folder", args.folder, "--samples", str(args.samples),
            "--seq-len", str(args.seq_len), "--group-size",
            str(args.group_size), "--out-root", root])
        shutil.rmtree(os.path.join(root, "quantized"), ignore_errors=True)
    print(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    main()
