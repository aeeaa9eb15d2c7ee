"""What every family's modeling file shares. capgap writes it into each file in place of the
import line that names it (a student folder holds one modeling file, which must stand alone)."""

import copy


def with_values(config, **values):
    """A copy of `config` with `values` set: the stock layer classes read their widths from it."""
    config = copy.copy(config)
    for key, value in values.items():
        setattr(config, key, value)
    return config


def share_config(module, config):
    # the per-layer copies only sized the modules; their forward reads the model's config
    # (the attention implementation), which must stay the one set_attn_implementation changes
    for m in module.modules():
        if getattr(m, "config", None) is not None:
            m.config = config
    return module


def check_widths(config, keys):
    """The per-layer widths the config must hold; replaces the stock check that the hidden
    size is divisible by the heads, which does not hold once hidden and heads are cut apart."""
    for key in keys:
        widths = getattr(config, key)
        if widths is None or len(widths) != config.num_hidden_layers:
            raise ValueError(f"{key} must list one width per layer ({config.num_hidden_layers})")
    if not config.head_dim:
        raise ValueError("head_dim must be set: hidden_size / heads is not the head size here")
