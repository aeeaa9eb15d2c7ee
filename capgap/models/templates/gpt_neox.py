"""A GPT-NeoX (Pythia) student pruned by capgap: each layer has its own widths.

capgap prunes every layer to its own number of attention heads and FFN neurons, and the
hidden size on its own, so heads x head size no longer equals the hidden size; no stock
config can say that. This file keeps the stock transformers classes and builds each layer
from them at its own widths, so weights, forward pass, KV cache and generate() are
transformers' own. It imports only torch and transformers. Load with
    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
"""

import copy

from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention, GPTNeoXLayer


class CapgapGPTNeoXConfig(GPTNeoXConfig):
    model_type = "capgap_gpt_neox"
    head_dim: int | None = None  # explicit: hidden_size / heads is not the head size here
    layer_heads: list[int] | None = None
    layer_intermediate: list[int] | None = None

    def validate_architecture(self):
        # the stock check (hidden_size divisible by the heads) does not apply: see head_dim
        for key in ("layer_heads", "layer_intermediate"):
            widths = getattr(self, key)
            if widths is None or len(widths) != self.num_hidden_layers:
                raise ValueError(f"{key} must list one width per layer ({self.num_hidden_layers})")
        if not self.head_dim:
            raise ValueError("head_dim must be set")

    def with_values(self, **values) -> GPTNeoXConfig:
        config = copy.copy(self)
        for key, value in values.items():
            setattr(config, key, value)
        return config


def _share_config(layer: nn.Module, config) -> nn.Module:
    # the per-layer copies only sized the modules; their forward reads the model's config
    # (the attention implementation), which must stay the one set_attn_implementation changes
    for m in layer.modules():
        if getattr(m, "config", None) is not None:
            m.config = config
    return layer


def make_layer(config: CapgapGPTNeoXConfig, i: int) -> GPTNeoXLayer:
    layer = GPTNeoXLayer(config.with_values(intermediate_size=config.layer_intermediate[i]), i)
    # the stock attention derives its head size, rotary dims and scaling from hidden_size /
    # heads: build it at its own width (heads x head_dim), then let its projections read and
    # write the residual stream's hidden_size
    heads, hidden = config.layer_heads[i], config.hidden_size
    width = heads * config.head_dim
    attention = GPTNeoXAttention(config.with_values(hidden_size=width, num_attention_heads=heads), i)
    attention.query_key_value = nn.Linear(hidden, 3 * width, bias=config.attention_bias)
    attention.dense = nn.Linear(width, hidden, bias=config.attention_bias)
    layer.attention = attention
    return _share_config(layer, config)


class CapgapGPTNeoXForCausalLM(GPTNeoXForCausalLM):
    config_class = CapgapGPTNeoXConfig

    def __init__(self, config: CapgapGPTNeoXConfig):
        super().__init__(config)
        self.gpt_neox.layers = nn.ModuleList(make_layer(config, i) for i in range(config.num_hidden_layers))
