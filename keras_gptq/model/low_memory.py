"""Quantizing a preset bigger than memory, one block at a time.

`quantize_preset(preset, output_dir, config)` gives the same preset as
`quantize(CausalLM.from_preset(preset), config)` then `save_to_preset`
(the same integers, bit for bit), without ever holding the float model:

1. The model is built from the preset's config with every variable
   deferred (Keras's deferred initialization: variables created inside a
   `keras.StatelessScope` get a shape and dtype but no value), so building
   it allocates nothing.
2. The layers outside the blocks (embeddings, final norm, an untied
   language-model head) get their values from the preset's
   `model.weights.h5`, read lazily through Keras's own loader
   (`saving_lib._load_state`, which visits the model exactly as
   `load_weights` does, skipping the blocks).
3. The walk (`pipeline.run_walk`) runs with `PresetBlocks` as its block
   source: before a block is solved its values are read from the file;
   once solved, its layers are packed at once and its float kernels
   dropped, so the next block starts with only the packed results in
   memory.
4. The model, now packed, is saved with `save_to_preset` (all or nothing:
   a failed run writes nothing).

Peak memory is about one float block and its solve, the calibration
activations, the packed blocks so far and the float layers outside the
blocks. Private Keras APIs used (keras 3.15.1, the pinned version):
`StatelessScope(initialize_variables=False)` and the
`uninitialized_variables` global, `Variable._deferred_initialize`, and
`saving_lib.H5IOStore`, `ShardedH5IOStore`, `_load_state`.
"""

import contextlib
import dataclasses
import os

import keras
from keras.src.backend.common import global_state
from keras.src.saving import saving_lib
from keras_hub.src.utils import preset_utils

from keras_gptq.keras_patches.saving import CorruptPresetError
from keras_gptq.model import capture
from keras_gptq.model import devices
from keras_gptq.model import pipeline
from keras_gptq.model import structure

_DEFERRED = "uninitialized_variables"  # Keras's global list of them


def quantize_preset(preset, output_dir, config, filters=None, verbose=True):
    """Quantizes a KerasHub preset on disk block by block, low on memory.

    Writes the preset `quantize(CausalLM.from_preset(preset), config)`
    then `save_to_preset(output_dir)` would (the same integers), holding
    at most one float transformer block at a time (see the module
    docstring).

    Args:
        preset: a KerasHub preset (a folder or handle) of a float
            `CausalLM`, with `model.weights.h5` (or sharded weights).
        output_dir: the folder to save the quantized preset to; written
            only once the whole model is quantized (all or nothing).
        config: a `keras_gptq.GPTQConfig`, as for `quantize`. Its
            `tokenizer` is not filled in from the preset: pass
            `keras_hub.tokenizers.Tokenizer.from_preset(preset)` for text.
        filters: as for `quantize`.
        verbose: show progress bars.

    Returns:
        The `QuantizationReport`.

    Raises:
        TypeError, ValueError: bad arguments, a preset that is not a
            KerasHub preset with a weights file, a Keras distribution over
            several devices (not supported in low-memory mode), or no layer
            to quantize.
        CorruptPresetError: the weights file cannot be read.

    Example:

    ```python
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset("float_preset")
    config = keras_gptq.GPTQConfig(dataset=texts, tokenizer=tokenizer)
    keras_gptq.quantize_preset("float_preset", "gptq_preset", config)
    ```
    """
    pipeline.check_arguments(config, filters)
    preset, output_dir, hf_folder = _check_paths(preset, output_dir)
    if devices.batch_devices(devices.active()) > 1:
        raise ValueError(
            "Low-memory mode (`quantize_preset`, `--low-memory`) does not "
            "support a Keras distribution over several devices; unset it "
            "(`keras.distribution.set_distribution(None)`) or quantize in "
            "memory.")
    if hf_folder:
        # The Hugging Face tensor names of each family live with the HF
        # interchange code (`keras_gptq.hf`), which builds on the walk.
        from keras_gptq.hf import blocks as hf_blocks
        opened = hf_blocks.open_folder(preset, config)
    else:
        opened = _open_preset(preset, config)
    with opened as (model, source):
        pipeline.check_model(model, config)
        # Some tasks' block structure builds a model of the embeddings
        # (GPT-2): in the scope, torch does not track placeholders for it.
        with deferring():
            plan = structure.plan_walk(model, config, filters)
        if plan is None:
            raise ValueError(
                "No Dense/EinsumDense layer matched `filters`: there is "
                "nothing to quantize, so no preset is written.")
        source.load_outside(plan.blocks)
        report = pipeline.run_walk(model, config, plan, verbose, source)
    model.save_to_preset(output_dir)
    return report


def _check_paths(preset, output_dir):
    """Returns `(preset, output_dir, is_hf_folder)`, the paths as
    strings, or raises."""
    if not isinstance(preset, (str, os.PathLike)) or not isinstance(
            output_dir, (str, os.PathLike)):
        raise TypeError(
            "`preset` and `output_dir` must be paths (str), but received "
            f"{type(preset).__name__} and {type(output_dir).__name__}.")
    preset, output_dir = os.fspath(preset), os.fspath(output_dir)
    if os.path.exists(preset) and os.path.exists(output_dir) and (
            os.path.samefile(preset, output_dir)):
        raise ValueError(
            f"`output_dir` {output_dir!r} is the input preset: choose "
            "another folder (the float preset is read while quantizing).")
    if not preset_utils.check_file_exists(preset, preset_utils.CONFIG_FILE):
        raise ValueError(
            f"{preset!r} is not a KerasHub preset: it has no "
            f"{preset_utils.CONFIG_FILE}.")
    config = preset_utils.load_json(preset)
    if "registered_name" not in config:
        if "model_type" in config and os.path.isdir(preset):
            return preset, output_dir, True  # a Hugging Face folder
        raise ValueError(
            f"{preset!r} is neither a KerasHub preset nor a local Hugging "
            f"Face folder: its {preset_utils.CONFIG_FILE} has neither "
            "`registered_name` nor `model_type`.")
    if preset_utils.check_file_exists(preset, preset_utils.TASK_WEIGHTS_FILE):
        raise ValueError(
            f"{preset!r} has task weights ({preset_utils.TASK_WEIGHTS_FILE}),"
            " which low-memory mode does not read. Quantize it in memory.")
    return preset, output_dir, False


@contextlib.contextmanager
def _open_preset(preset, config):
    """Yields `(model, PresetBlocks)` of a KerasHub preset, its weights
    file open for lazy reading (closed on exit)."""
    with _weights_store(preset) as store:
        model = _deferred_model(preset)
        yield model, PresetBlocks(model, store, config)


@contextlib.contextmanager
def _weights_store(preset):
    """Yields the preset's weights, opened for lazy reading, and closes
    them on exit."""
    single = preset_utils.MODEL_WEIGHTS_FILE
    sharded = preset_utils.SHARDED_MODEL_WEIGHTS_CONFIG_FILE
    try:
        if preset_utils.check_file_exists(preset, single):
            store = saving_lib.H5IOStore(
                preset_utils.get_file(preset, single), mode="r")
        elif preset_utils.check_file_exists(preset, sharded):
            index = preset_utils.get_file(preset, sharded)
            loader = preset_utils.get_preset_loader(preset)
            for name in loader._get_sharded_filenames(index):
                preset_utils.get_file(preset, name)
            store = saving_lib.ShardedH5IOStore(index, mode="r")
        else:
            raise ValueError(
                f"Preset {preset!r} has no weights file ({single} or "
                f"{sharded}).")
    except OSError as e:
        raise CorruptPresetError(
            f"Could not open the weights of preset {preset!r}: {e}") from e
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def deferring():
    """Variables created inside get no value. They are kept out of Keras's
    global list of deferred variables, which the end of any later
    `StatelessScope` would initialize."""
    before = global_state.get_global_attribute(_DEFERRED)
    global_state.set_global_attribute(_DEFERRED, [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute(_DEFERRED, before)


def _deferred_model(preset):
    """The preset's `CausalLM`, built as `CausalLM.from_preset(preset,
    load_weights=False)` builds it, with its variables deferred (no
    values). It is compiled after the scope (the optimizer's variables
    cannot be deferred); on torch, building inside the scope also keeps
    the layers from tracking placeholder parameters."""
    import keras_hub

    with deferring():
        model = keras_hub.models.CausalLM.from_preset(
            preset, load_weights=False, compile=False)
    model.compile()
    return model


def is_deferred(variable):
    return variable._value is None


def materialize(variables, weights):
    """Gives each deferred variable of `variables` a value: zeros for those
    in `weights` (the loader overwrites them), its own initializer for the
    rest (random-seed states), as building it would."""
    weight_ids = {id(w) for w in weights}
    for variable in variables:
        if is_deferred(variable):
            if id(variable) in weight_ids:
                variable._initializer = keras.initializers.Zeros()
            variable._deferred_initialize()


@dataclasses.dataclass
class _Packed:
    """What the walk keeps of a block packed at once: its report entries."""

    entries: list


class DiskBlocks:
    """What the block sources reading from disk share (see
    `pipeline.run_walk`): a block is packed as soon as it is solved, and
    at the end every variable must have been read.

    Subclasses implement `load_outside(blocks)` (every value outside the
    blocks) and `load(block)` (one block's values, before it is solved).

    Args:
        model: the model built with deferred variables.
        config: the `GPTQConfig` (the packed bits and group sizes).
    """

    def __init__(self, model, config):
        self.backbone = capture.forward_model(model)
        self.config = config

    def done(self, block, solved):
        """Packs `block`'s solved layers and banks now (their float kernels
        are dropped); keeps only their report entries."""
        for item in solved:
            item.write(self.config)
        return [_Packed(item.entries) for item in solved]

    def finish(self, kept, config):
        """Checks that every variable of the model got its value."""
        missing = [v.path for v in self.backbone.variables
                   if is_deferred(v)]
        if missing:
            raise RuntimeError(
                "Low-memory mode left variables without values (not in "
                f"the weights file, or outside the walked blocks): "
                f"{missing[:5]}. Quantize this model in memory.")


class PresetBlocks(DiskBlocks):
    """Block source of `quantize_preset` for a KerasHub preset: each
    block's float values are read from the preset's weights file just
    before it is solved; once solved it is packed and its float kernels
    dropped.

    Args:
        model: the model built with deferred variables.
        store: the preset's weights (a Keras `H5IOStore`).
        config: the `GPTQConfig` (the packed bits and group sizes).
    """

    def __init__(self, model, store, config):
        super().__init__(model, config)
        self.store = store
        self.loaded = set()
        self.visited = set()  # ids of the objects `_load` skips

    def _load(self):
        """Loads the backbone's weights, but those of `self.visited`, from
        the path `load_weights` would (it walks the model as Keras does);
        the objects loaded join `self.visited`."""
        saving_lib._load_state(self.backbone, self.store, None, "",
                               visited_saveables=self.visited)

    def load_outside(self, blocks):
        """Loads every weight outside `blocks` (embeddings, norms, head)."""
        inside = {id(v) for b in blocks for v in b.variables}
        outside = [v for v in self.backbone.variables if id(v) not in inside]
        materialize(outside, self.backbone.weights)
        self.visited = {id(b) for b in blocks}
        self._load()

    def load(self, block):
        """Reads `block`'s float values from the preset (once)."""
        if id(block) in self.loaded:
            return
        materialize(block.variables, block.weights)
        self.visited -= {id(self.backbone), id(block)}
        self._load()
        self.loaded.add(id(block))
