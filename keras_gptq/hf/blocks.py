"""Low-memory quantization of a float Hugging Face folder, block by block.

`keras_gptq.quantize_preset(folder, output_dir, config)` accepts a local
transformers folder (`config.json` + `*.safetensors`, e.g. a
`save_pretrained` output) of a family in `hf.families.FAMILIES`, and
writes the KerasHub preset that quantizing the folder's model in memory
(`CausalLM.from_preset(folder)`, `quantize`, `save_to_preset`) gives, the
same integers, without ever holding the float model:

- the model is built from `config.json` with every variable deferred
  (`model.low_memory.deferring`), as `load_hf_gptq` builds it;
- each float tensor is read from the safetensors files only when the block
  that holds its variables is about to be solved (tensors outside the
  blocks, such as embeddings and final norm, first; an untied lm_head,
  which only the save needs, last),
  through the same per-family tables as `load_hf_gptq` (`hf.families`):
  one table maps every tensor name to its Keras variables, so nothing
  depends on KerasHub's converters (which assign the whole model at once);
- the walk then packs each block as soon as it is solved
  (`model.low_memory.DiskBlocks`).

Every weight of the model must come from the folder: a weight no tensor
fills is an error, never a silent zero.
"""

import contextlib

import keras_hub

from keras_gptq.hf import configs
from keras_gptq.hf import families
from keras_gptq.hf import format as hf_format
from keras_gptq.hf import load
from keras_gptq.hf import parts
from keras_gptq.model import low_memory


@contextlib.contextmanager
def open_folder(folder, config):
    """Yields `(model, FolderBlocks)` for a float Hugging Face folder: the
    family's KerasHub CausalLM built with deferred variables, and the
    block source that fills them from the folder.

    Args:
        folder: a local transformers folder with `config.json` and
            `*.safetensors` files (float weights).
        config: the `GPTQConfig` of the run.

    Raises:
        ValueError: an architecture outside `hf.families.FAMILIES` (names
            the supported ones), or a folder that is already quantized
            (`quantization_config` in its `config.json`).
        FileNotFoundError: no `.safetensors` file.
    """
    hf_config = load.read_json(folder, "config.json")
    if "quantization_config" in hf_config:
        raise ValueError(
            f"{folder!r} is already quantized (its config.json has a "
            "`quantization_config`); low-memory mode reads float folders. "
            "Load it with `keras_gptq.load_hf_gptq`.")
    family = families.family_of_config(hf_config)
    tensors = load.Tensors(folder)
    cls = getattr(keras_hub.models, family.causal_lm)
    with low_memory.deferring():
        backbone = cls.backbone_cls(
            **configs.backbone_kwargs(family.model_type, hf_config))
        model = cls(backbone=backbone, compile=False,
                    preprocessor=load.preprocessor(family, folder))
    model.compile()  # after the scope: optimizer variables need values
    family = load.named_family(family, backbone, tensors)
    yield model, FolderBlocks(model, family, tensors, config)


def _targets(module):
    """The Keras variables a linear module's parts are written into."""
    return [getattr(p.bank, p.matrix.name) if isinstance(p, parts.ExpertRows)
            else p.layer._kernel for p in module]


class FolderBlocks(low_memory.DiskBlocks):
    """Block source of `quantize_preset` for a float Hugging Face folder
    (see the module docstring): each block's tensors are read just before
    it is solved.

    Args:
        model: the family's CausalLM, built with deferred variables.
        family: its `hf.families.Family`, named as the folder names its
            modules.
        tensors: the folder's `hf.load.Tensors`.
        config: the `GPTQConfig`.
    """

    def __init__(self, model, family, tensors, config):
        super().__init__(model, config)
        self.family = family
        self.tensors = tensors
        self.head = family.lm_head(self.backbone)  # untied, or None
        self.filled = set()  # ids of the variables assigned from the folder
        # (ids of the variables it fills, read): every tensor to read. Ids,
        # not variables: a packed block's float kernels must be freed.
        self.reads = []
        for name, (variables, heads) in load.float_table(
                self.backbone, family).items():
            self.reads.append(([id(v) for v in variables],
                               self._float_tensor(name, variables, heads)))
        for table, transposed in ((None, family.transposed_weights),
                                  (family.float_modules, False)):
            for name, module in family.linear_modules(
                    self.backbone, table).items():
                self.reads.append(([id(v) for v in _targets(module)],
                                   self._module(name, module, transposed)))
        self.by_block = {}  # block index or None: [read]
        self.loaded = set()

    def _float_tensor(self, name, variables, heads):
        def read():
            load.load_float_tensor(name, variables, heads, self.family,
                                   self.tensors)
        return read

    def _module(self, name, module, transposed):
        def read():
            load.load_float_module(name, module, self.tensors, transposed)
        return read

    def _group(self, blocks):
        """Sorts every read by the block holding its variables (None:
        outside the blocks; "head": an untied lm_head, which the walk
        never uses, read at the end)."""
        owner = {id(v): i for i, b in enumerate(blocks) for v in b.variables}
        if self.head is not None:
            owner[id(self.head)] = "head"
        for targets, read in self.reads:
            where = {owner.get(i) for i in targets}
            if len(where) != 1:
                raise hf_format.UnsupportedCheckpointError(
                    "A tensor spans several transformer blocks "
                    f"{sorted(where, key=str)}. Quantize in memory.")
            self.by_block.setdefault(where.pop(), []).append(
                (targets, read))
        self.index = {id(b): i for i, b in enumerate(blocks)}

    def _run(self, key, weights):
        """Runs the reads of `key` (a block index or None); every one of
        `weights` must then hold a value read from the folder."""
        for targets, read in self.by_block.pop(key, []):
            read()
            self.filled.update(targets)
        missing = [v.path for v in weights if id(v) not in self.filled]
        if missing:
            raise hf_format.UnsupportedCheckpointError(
                "No tensor of the folder fills these weights: "
                f"{missing[:5]}. Quantize this model in memory.")

    def load_outside(self, blocks):
        """Reads every tensor outside `blocks` (embeddings, norms) but an
        untied lm_head (read by `finish`)."""
        self._group(blocks)
        later = {id(v) for b in blocks for v in b.variables} | (
            set() if self.head is None else {id(self.head)})
        low_memory.materialize(
            [v for v in self.backbone.variables if id(v) not in later],
            self.backbone.weights)
        self._run(None, [w for w in self.backbone.weights
                         if id(w) not in later])

    def finish(self, kept, config):
        """Reads the untied lm_head (not needed by the walk: it is held
        only for the save), then checks every variable got its value."""
        if self.head is not None:
            low_memory.materialize([self.head], [self.head])
            self._run("head", [self.head])
        super().finish(kept, config)

    def load(self, block):
        """Reads `block`'s tensors (once)."""
        key = self.index[id(block)]
        if key in self.loaded:
            return
        low_memory.materialize(block.variables, block.weights)
        self._run(key, block.weights)
        self.loaded.add(key)
