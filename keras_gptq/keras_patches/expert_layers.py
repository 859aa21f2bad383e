"""KerasHub's expert banks: packed storage for `PackedGPTQPolicy` banks.

The expert-bank layers of KerasHub 0.32's MoE families
(`keras_gptq.model.experts.FAMILIES`) are plain `Layer`s with raw
`[E, in, out]` variables; Keras gives them no quantized build, call or
variable I/O (a quantized policy makes Keras call `_gptq_call`, which
`Layer` leaves unimplemented). Each bank class gets four hooks here, and
each changes behaviour only for a bank whose policy is a
`PackedGPTQPolicy` (`keras_gptq/storage/packed_experts.py`):

- `build`: the bank's own build, then its matrices replaced by packed
  variables;
- `_gptq_call`: the bank's forward pass on its dequantized matrices
  (`model.experts.bank_output`, checked against the bank's own `call`);
- `save_own_variables`, `load_own_variables`: the packed variables, with
  the checks of packed Dense layers.

The MoE blocks that KerasHub builds without a name (Mixtral, QwenMoe,
Qwen3Moe) get the name GptOss and Qwen3.5-MoE already use,
`"sparse_moe_block"`: an auto-name is numbered per process
(`mixtral_sparse_moe_block_3`), so the path-keyed dtype policies of a saved
preset would miss its layers when the preset is loaded in a process that
had built another such model (weights are found by attribute, not name,
so float presets load as before).
"""

from keras_gptq.model import experts
from keras_gptq.storage import packed_experts
from keras_gptq.storage.policy import is_packed

HOOKS = ("build", "_gptq_call", "save_own_variables", "load_own_variables")
STABLE_NAME = "sparse_moe_block"


def _wrap(cls, family):
    build, gptq_call = cls.build, cls._gptq_call
    save, load = cls.save_own_variables, cls.load_own_variables

    def build_(self, input_shape, _orig=build):
        _orig(self, input_shape)
        if is_packed(self):
            packed_experts.build_packed_bank(self, family.matrices)

    def _gptq_call(self, hidden_states, _orig=gptq_call):
        if not is_packed(self):
            return _orig(self, hidden_states)
        kernels = packed_experts.dequantized_kernels(self, family.matrices)
        for matrix in family.matrices:
            if matrix.bias is not None:
                kernels[matrix.bias] = getattr(self, matrix.bias)
        return experts.bank_output(family, self, hidden_states, kernels)

    def save_own_variables(self, store, _orig=save):
        if is_packed(self) and self.built:
            return packed_experts.save_bank(self, family.matrices, store)
        return _orig(self, store)

    def load_own_variables(self, store, _orig=load):
        if is_packed(self) and self.built:
            return packed_experts.load_bank(self, family.matrices, store)
        return _orig(self, store)

    cls.build = build_
    cls._gptq_call = _gptq_call
    cls.save_own_variables = save_own_variables
    cls.load_own_variables = load_own_variables


def _name_block(cls):
    init = cls.__init__

    def __init__(self, *args, _orig=init, **kwargs):
        kwargs.setdefault("name", STABLE_NAME)
        _orig(self, *args, **kwargs)

    cls.__init__ = __init__


def targets():
    """The patched attributes, as importable dotted names."""
    return tuple(f"{cls.__module__}.{cls.__name__}.{hook}"
                 for cls in experts.BANK_FAMILIES for hook in HOOKS) + tuple(
        f"{cls.__module__}.{cls.__name__}.__init__"
        for cls in experts.UNNAMED_MOE_BLOCKS)


def install():
    """Wraps the four hooks of every expert-bank class of the table, and
    names the MoE blocks KerasHub leaves unnamed."""
    for cls, family in experts.BANK_FAMILIES.items():
        _wrap(cls, family)
    for cls in experts.UNNAMED_MOE_BLOCKS:
        _name_block(cls)
