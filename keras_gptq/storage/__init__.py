"""Storage: packed levels, scales, zero points and group indices inside
Keras's own Dense/EinsumDense layers.

- `packing`: the one bit packer (levels <-> bytes, and the HF int32 words).
- `policy`: `PackedGPTQPolicy`, the dtype policy that marks a packed layer.
- `kernels`: the packed-layer matmul, one seam with a fast path per
  backend (act-order columns sorted once); `torch_int4`: torch's aten
  int4 kernels.
- `packed_layer`: build, call, save, load, dequantize; `write_packed`
  turns a float layer into a packed one and `restore_float` undoes it;
  `make_packed` gives a float layer empty packed storage (to be loaded).
- `packed_experts`: the same for mixture-of-experts banks (one packed
  matrix per expert); `write_packed_bank` / `restore_float_bank`.

Storage never knows where the numbers came from (GPTQ, RTN or a Hugging
Face checkpoint).
"""

from keras_gptq.storage.packed_experts import restore_float_bank
from keras_gptq.storage.packed_experts import write_packed_bank
from keras_gptq.storage.packed_layer import dequantized_kernel
from keras_gptq.storage.packed_layer import dequantized_matrix
from keras_gptq.storage.packed_layer import make_packed
from keras_gptq.storage.packed_layer import restore_float
from keras_gptq.storage.packed_layer import stored_levels
from keras_gptq.storage.packed_layer import write_packed
from keras_gptq.storage.packing import pack
from keras_gptq.storage.packing import packed_width
from keras_gptq.storage.packing import unpack
from keras_gptq.storage.policy import LAYOUT_VERSION
from keras_gptq.storage.policy import PackedGPTQPolicy
from keras_gptq.storage.policy import is_packed
from keras_gptq.storage.policy import layer_policy

__all__ = ["LAYOUT_VERSION", "PackedGPTQPolicy", "dequantized_kernel",
           "dequantized_matrix", "is_packed", "layer_policy", "make_packed",
           "pack", "packed_width", "restore_float", "restore_float_bank",
           "stored_levels", "unpack", "write_packed", "write_packed_bank"]
