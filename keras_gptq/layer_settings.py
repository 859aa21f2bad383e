"""Per-layer settings: `GPTQConfig(overrides={regex: settings or None})`.

The semantics follow GPTQModel's `dynamic`:

- each key is a regex searched in a layer's path (a Dense/EinsumDense
  layer, or an expert bank: one setting for all its experts), e.g.
  `"feedforward_output_dense"` or `r"transformer_layer_(0|1)/"`;
- the first key that matches decides: a dict overrides the run's settings
  for that layer, None skips the layer (it stays float);
- GPTQModel's prefixes are accepted: `"-:regex"` skips, `"+:regex"` is the
  same as `"regex"`; so are its setting names (`bits`, `sym`, `desc_act`,
  `damp_percent`).

Each overridden setting is checked by `GPTQConfig`'s own validator. The
settings a layer was quantized with travel in its dtype policy
(`gptq/<bits>/<group_size>`) and its stored zero points and `g_idx`, so a
saved preset, `keras-gptq inspect` and `export_hf` see them.
"""

import re

OVERRIDABLE = ("weight_bits", "group_size", "symmetric", "activation_order",
               "hessian_damping", "mse", "static_groups")
ALIASES = {"bits": "weight_bits", "sym": "symmetric",
           "desc_act": "activation_order", "damp_percent": "hessian_damping"}


def _regex(pattern):
    return pattern[2:] if pattern[:2] in ("-:", "+:") else pattern


def check(name, overrides, validators):
    """Validates `overrides` (None or a dict); returns it normalised: keys
    as given, settings under keras_gptq's names, None for a skip.

    Raises:
        TypeError, ValueError: naming the entry and the fix.
    """
    if overrides is None:
        return None
    if not isinstance(overrides, dict):
        raise TypeError(
            f"`{name}` must be a dict {{regex: settings dict or None}}, but "
            f"received {overrides!r}.")
    checked = {}
    for pattern, settings in overrides.items():
        if not isinstance(pattern, str):
            raise TypeError(f"`{name}` keys must be regex strings, but "
                            f"received {pattern!r}.")
        try:
            re.compile(_regex(pattern))
        except re.error as e:
            raise ValueError(f"`{name}` holds the invalid regex "
                             f"{pattern!r}: {e}.") from None
        if pattern.startswith("-:") or settings is None:
            if settings:
                raise ValueError(f"`{name}[{pattern!r}]`: a '-:' pattern "
                                 "skips the layer and takes no settings.")
            checked[pattern] = None
            continue
        if not isinstance(settings, dict):
            raise TypeError(f"`{name}[{pattern!r}]` must be a dict of "
                            "settings, or None to skip the layer, but "
                            f"received {settings!r}.")
        checked[pattern] = {}
        for key, value in settings.items():
            field = ALIASES.get(key, key)
            if field not in OVERRIDABLE:
                raise ValueError(
                    f"`{name}[{pattern!r}]` cannot set {key!r}; per-layer "
                    f"settings are {list(OVERRIDABLE)}.")
            checked[pattern][field] = validators[field](
                f"{name}[{pattern!r}][{key!r}]", value)
    return checked


def lookup(overrides, path):
    """The settings of the first entry whose regex matches `path`: a dict
    (possibly empty: no entry matches), or None (skip the layer)."""
    for pattern, settings in (overrides or {}).items():
        if re.search(_regex(pattern), path):
            return settings
    return {}
