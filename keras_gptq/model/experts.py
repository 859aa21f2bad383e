"""Mixture-of-experts families: one declarative table per family.

KerasHub 0.32 keeps each MoE layer's experts in one "expert bank" layer
(`MixtralMoeExperts`, `QwenMoeExperts`, ...): raw `[E, in, out]` variables
applied densely to every token with `einsum`, then weighted by the routing.
GPTQ needs each expert as its own matrix, fed only the tokens the router
sends it (as GPTQModel and llm-compressor do for MoE models), so this
module says, per family, where the bank and its router are, which variable
sees which input, and how the routing is read:

- `tokens` matrices (gate, up, fused gate_up) see the hidden states of the
  tokens routed to that expert;
- `intermediate` matrices (down) see that expert's activations on those
  tokens (computed with the gate/up weights already quantized, as in
  GPTQ's sequential order);
- the router reads top-k of the router logits (softmax before or after the
  top-k, as each family does); Qwen-MoE's shared expert is an ordinary
  dense MLP and is quantized like any Dense layer.

Router gates (and the shared-expert gate) stay float unless
`GPTQConfig(quantize_router=True)`.

Hessians are unweighted (each routed token counts once, as in GPTQModel);
weighting rows by the routing probability is available to the benchmark
(`benchmarks/moe_weighting.py`). A matrix whose expert receives fewer
calibration tokens than `GPTQConfig.min_tokens_per_input` (1.25) per input
feature is rounded to nearest with a warning and a report note, like any
layer (`solve.starved_note`).
"""

import dataclasses
import functools

import keras
import numpy as np
from keras import ops
from keras_hub.src.models.gpt_oss import gpt_oss_decoder as gpt_oss
from keras_hub.src.models.mixtral import mixtral_decoder as mixtral
from keras_hub.src.models.qwen3_5_moe import qwen3_5_moe_decoder as qwen3_5
from keras_hub.src.models.qwen3_moe import qwen3_moe_decoder as qwen3_moe
from keras_hub.src.models.qwen_moe import qwen_moe_decoder as qwen_moe


@dataclasses.dataclass(frozen=True)
class ExpertMatrix:
    """One variable of an expert bank: E matrices, one per expert.

    Attributes:
        name: the bank's attribute holding the variable.
        sees: "tokens" (routed hidden states) or "intermediate" (the
            expert's activations on its routed tokens).
        layout: "e_in_out" (`[E, in, out]`, every KerasHub 0.32 bank) or
            "e_out_in".
        bias: the bank's attribute holding an `[E, out]` bias added after
            this matrix (kept float), or None.
    """

    name: str
    sees: str
    layout: str = "e_in_out"
    bias: str = None

    def expert_matrix(self, kernel, e):
        """`W[out, in]` of expert `e` from the numpy bank variable."""
        W = np.asarray(kernel[e], dtype=np.float32)
        return W.T if self.layout == "e_in_out" else W

    def bank_kernel(self, matrices):
        """The bank variable's value from E `W[out, in]` matrices."""
        stacked = np.stack(matrices)
        if self.layout == "e_in_out":
            stacked = np.swapaxes(stacked, 1, 2)
        return stacked


@dataclasses.dataclass(frozen=True)
class ExpertFamily:
    """Where a family keeps its experts and how it routes tokens.

    Attributes:
        moe_block: the sparse-MoE layer class holding router and bank.
        bank_attr: its attribute holding the expert bank.
        router: dotted attribute path from the MoE block to the router
            Dense (the layer whose outputs are the router logits).
        gates: other gate Dense attributes of the MoE block that stay float
            with the router (Qwen-MoE's shared expert gate).
        softmax_first: softmax over all experts then top-k (Mixtral, Qwen);
            False: top-k of the logits then softmax over those (GptOss).
        normalize: renormalise the top-k probabilities: True, False, or the
            name of the MoE block's boolean attribute that says so.
        matrices: the bank's `ExpertMatrix`es, `tokens` ones first.
        hidden: `hidden(bank, project) -> [E, T, inter]`, the experts'
            activations, where `project(name)` applies matrix `name` (and
            its bias) to the bank's input for every expert.
    """

    moe_block: type
    bank_attr: str
    router: str
    matrices: tuple
    hidden: object
    gates: tuple = ()
    softmax_first: bool = True
    normalize: object = True

    @property
    def bank_class(self):
        """The expert bank's class (the MoE block builds it)."""
        return _BANK_CLASSES[self.moe_block]

    def matrix(self, name):
        """The `ExpertMatrix` called `name`."""
        return next(m for m in self.matrices if m.name == name)


def _silu_in_float32(bank, gate):
    """`silu(gate)` computed in float32 (as Mixtral and Qwen3.5 do)."""
    act = getattr(bank, "activation", ops.silu)
    return ops.cast(act(ops.cast(gate, "float32")), bank.compute_dtype)


def _mixtral_hidden(bank, project):
    gate = _silu_in_float32(bank, project("_expert_feedforward_gate_dense"))
    return project("_expert_feedforward_intermediate_dense") * gate


def _halves_hidden(bank, project, float32_gate=False):
    gate, up = ops.split(project("_expert_feedforward_gate_dense"), 2,
                         axis=-1)
    gate = _silu_in_float32(bank, gate) if float32_gate else (
        bank.activation(gate))
    return up * gate


def _gpt_oss_hidden(bank, project):
    gate_up = project("gate_up_proj")
    gate = ops.clip(gate_up[..., ::2], -1e9, bank.limit)
    up = ops.clip(gate_up[..., 1::2], -bank.limit, bank.limit)
    return (up + 1) * (gate * ops.sigmoid(gate * bank.alpha))


_GATE = ExpertMatrix("_expert_feedforward_gate_dense", "tokens")
_DOWN = ExpertMatrix("_expert_feedforward_output_dense", "intermediate")

FAMILIES = (
    ExpertFamily(
        mixtral.MixtralSparseMoeBlock, "expert_bank",
        "_sparse_feedforward_gate_dense",
        (_GATE, ExpertMatrix("_expert_feedforward_intermediate_dense",
                             "tokens"), _DOWN),
        _mixtral_hidden),
    ExpertFamily(
        qwen_moe.QwenSparseMoeBlock, "expert_bank",
        "_sparse_feedforward_gate_dense", (_GATE, _DOWN), _halves_hidden,
        gates=("shared_expert_gate_dense",), normalize="norm_top_k_prob"),
    ExpertFamily(
        qwen3_moe.Qwen3SparseMoeBlock, "expert_bank",
        "_sparse_feedforward_gate_dense", (_GATE, _DOWN), _halves_hidden,
        normalize="norm_top_k_prob"),
    ExpertFamily(
        qwen3_5.Qwen3_5MoeSparseMoeBlock, "expert_bank", "_router_gate",
        (_GATE, _DOWN), functools.partial(_halves_hidden, float32_gate=True),
        gates=("_shared_expert_gate",)),
    ExpertFamily(
        gpt_oss.GptOssSparseMoeBlock, "experts", "router.router_dense",
        (ExpertMatrix("gate_up_proj", "tokens", bias="gate_up_proj_bias"),
         ExpertMatrix("down_proj", "intermediate", bias="down_proj_bias")),
        _gpt_oss_hidden, softmax_first=False, normalize=False),
)

_BANK_CLASSES = {
    mixtral.MixtralSparseMoeBlock: mixtral.MixtralMoeExperts,
    qwen_moe.QwenSparseMoeBlock: qwen_moe.QwenMoeExperts,
    qwen3_moe.Qwen3SparseMoeBlock: qwen3_moe.Qwen3MoeExperts,
    qwen3_5.Qwen3_5MoeSparseMoeBlock: qwen3_5.Qwen3_5MoeExperts,
    gpt_oss.GptOssSparseMoeBlock: gpt_oss.GptOssExperts,
}

BANK_FAMILIES = {f.bank_class: f for f in FAMILIES}

# MoE blocks their decoders build without a name (an auto-name numbered
# per process); `keras_patches.expert_layers` gives them a fixed one.
UNNAMED_MOE_BLOCKS = (mixtral.MixtralSparseMoeBlock,
                      qwen_moe.QwenSparseMoeBlock,
                      qwen3_moe.Qwen3SparseMoeBlock)


@dataclasses.dataclass(frozen=True)
class MoeLayer:
    """One MoE layer of a block: its family, MoE block, bank and router."""

    family: ExpertFamily
    block: keras.layers.Layer
    bank: keras.layers.Layer
    router: keras.layers.Layer

    @property
    def num_experts(self):
        """E, the number of experts of the bank."""
        return int(self.bank.num_experts)

    def routing(self, x):
        """`(experts [T, k], weights [T, k])` numpy, the router's choice for
        the bank inputs `x [T, hidden]`."""
        family, logits = self.family, self.router(x)
        k = int(self.block.top_k)
        if family.softmax_first:
            weights, experts = ops.top_k(ops.softmax(logits, axis=-1), k=k)
        else:
            values, experts = ops.top_k(logits, k=k)
            weights = ops.softmax(values, axis=-1)
        normalize = family.normalize
        if isinstance(normalize, str):
            normalize = bool(getattr(self.block, normalize))
        if normalize:
            weights = weights / ops.sum(weights, axis=-1, keepdims=True)
        return (np.asarray(ops.convert_to_numpy(experts)),
                np.asarray(ops.convert_to_numpy(
                    ops.cast(weights, "float32"))))


def _attribute(obj, dotted):
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def moe_layers(block):
    """The `MoeLayer`s inside a transformer block, in layer order."""
    found = []
    for layer in block._flatten_layers(include_self=True):
        for family in FAMILIES:
            if type(layer) is family.moe_block:
                found.append(MoeLayer(
                    family, layer, getattr(layer, family.bank_attr),
                    _attribute(layer, family.router)))
    return found


def router_gates(block):
    """The Dense layers of `block` that gate experts (kept float by
    default): routers and shared-expert gates."""
    gates = []
    for moe in moe_layers(block):
        gates.append(moe.router)
        gates += [getattr(moe.block, g) for g in moe.family.gates]
    return gates


def bank_output(family, bank, x, kernels):
    """The bank's output `[E, T, hidden]` for inputs `x [T, hidden]`.

    Args:
        family: the bank's `ExpertFamily`.
        bank: the expert bank layer (for its activation and constants).
        x: `[T, hidden]` inputs.
        kernels: `{name: [E', in, out] tensor}` for every matrix and bias
            (E' may be a slice of the experts).
    """
    hidden = bank_hidden(family, bank, x, kernels)
    down = next(m for m in family.matrices if m.sees == "intermediate")
    return _apply(hidden, kernels, down)


def bank_hidden(family, bank, x, kernels):
    """The experts' intermediate activations `[E', T, inter]` (the inputs
    of the `intermediate` matrix); arguments as `bank_output`."""
    return family.hidden(bank, lambda name: _apply(
        x, kernels, family.matrix(name)))


def _apply(x, kernels, matrix):
    kernel = kernels[matrix.name]
    if matrix.layout == "e_out_in":
        kernel = ops.swapaxes(kernel, 1, 2)
    equation = "th,ehm->etm" if len(x.shape) == 2 else "eth,ehm->etm"
    y = ops.einsum(equation, x, kernel)
    if matrix.bias is not None:
        y = y + kernels[matrix.bias][:, None, :]
    return y
