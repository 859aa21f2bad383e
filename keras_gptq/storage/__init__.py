"""Storage: packed levels, scales, zero points and group indices inside
Keras's own Dense/EinsumDense layers.

- `packing`: the one bit packer (levels <-> bytes, and the HF int32 words).
- `policy`: `PackedGPTQPolicy`, the dtype policy that marks a packed layer.
- `packed_layer`: build, call, save, load, dequantize; `write_packed`
  turns a float layer into a packed one and `restore_float` undoes it.

Storage never knows where the numbers came from (GPTQ, RTN or a Hugging
Face checkpoint).
"""

from keras_gptq.storage.packed_layer import dequantized_kernel
from keras_gptq.storage.packed_layer import dequantized_matrix
from keras_gptq.storage.packed_layer import restore_float
from keras_gptq.storage.packed_layer import write_packed
from keras_gptq.storage.packing import pack
from keras_gptq.storage.packing import packed_width
from keras_gptq.storage.packing import unpack
from keras_gptq.storage.policy import LAYOUT_VERSION
from keras_gptq.storage.policy import PackedGPTQPolicy
from keras_gptq.storage.policy import is_packed
from keras_gptq.storage.policy import layer_policy

__all__ = ["LAYOUT_VERSION", "PackedGPTQPolicy", "dequantized_kernel",
           "dequantized_matrix", "is_packed", "layer_policy", "pack",
           "packed_width", "restore_float", "unpack", "write_packed"]
