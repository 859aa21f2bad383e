"""The dtype policy that marks a layer as holding keras_gptq packed weights.

A quantized layer carries a `PackedGPTQPolicy` (a `GPTQDTypePolicy`
registered as `keras_gptq>PackedGPTQPolicy`), directly or inside the
model's `DTypePolicyMap`. The policy says the bits and group size and the
storage layout version; `keras_gptq.keras_patches.packed_layers` routes a
layer to the packed storage exactly when its policy is one.
"""

import keras

LAYOUT_VERSION = 1


@keras.saving.register_keras_serializable(package="keras_gptq")
class PackedGPTQPolicy(keras.dtype_policies.GPTQDTypePolicy):
    """Dtype policy of a layer holding keras_gptq's packed GPTQ weights.

    Args:
        mode: `"gptq/<bits>/<group_size>"`, as for `GPTQDTypePolicy`.
        source_name: the float policy the layer had, e.g. `"float32"`.
        layout_version: version of the storage layout (currently 1).
    """

    def __init__(self, mode, source_name=None, layout_version=LAYOUT_VERSION):
        super().__init__(mode, source_name=source_name)
        if layout_version != LAYOUT_VERSION:
            raise ValueError(
                f"This preset uses keras_gptq storage layout "
                f"{layout_version}, but this keras_gptq reads layout "
                f"{LAYOUT_VERSION}. Install the keras_gptq version that "
                "wrote the preset."
            )
        self.layout_version = layout_version

    def get_config(self):
        """Returns the policy config, with the layout version."""
        config = super().get_config()
        config["layout_version"] = self.layout_version
        return config


# Presets record the class's module beside its registered name; keep the
# public `keras_gptq.storage` path that presets have always named.
PackedGPTQPolicy.__module__ = "keras_gptq.storage"


def layer_policy(layer):
    """Returns the layer's own dtype policy, looked up in a policy map."""
    policy = getattr(layer, "_dtype_policy", None)
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap) and layer.path:
        policy = policy[layer.path]
    return policy


def set_policy(layer, policy):
    """Sets the layer's own policy, inside its policy map if it has one."""
    current = layer._dtype_policy
    if isinstance(current, keras.dtype_policies.DTypePolicyMap) and layer.path:
        if layer.path in current:
            del current[layer.path]
        current[layer.path] = policy
    else:
        layer._dtype_policy = policy


def is_packed(layer):
    """True when `layer` holds keras_gptq packed weights."""
    return isinstance(layer_policy(layer), PackedGPTQPolicy)


def packed_policy(layer):
    """Returns the layer's `PackedGPTQPolicy`; TypeError if it has none."""
    policy = layer_policy(layer)
    if not isinstance(policy, PackedGPTQPolicy):
        raise TypeError(f"{layer.name} has no PackedGPTQPolicy: {policy}")
    return policy
