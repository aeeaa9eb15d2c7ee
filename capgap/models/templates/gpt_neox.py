"""A GPT-NeoX (Pythia) student pruned by capgap: each layer has its own widths.

capgap prunes every layer to its own number of attention heads and FFN neurons, and the
hidden size on its own, so heads x head size no longer equals the hidden size; no stock
config can say that. This file keeps the stock transformers classes and builds each layer
from them at its own widths, so weights, forward pass, KV cache and generate() are
transformers' own. It imports only torch and transformers. Load with
    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
"""

from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention, GPTNeoXLayer

from .common import check_widths, share_config, with_values  # capgap: inlined


class CapgapGPTNeoXConfig(GPTNeoXConfig):
    model_type = "capgap_gpt_neox"
    head_dim: int | None = None  # explicit: hidden_size / heads is not the head size here
    layer_heads: list[int] | None = None
    layer_intermediate: list[int] | None = None

    def validate_architecture(self):
        check_widths(self, ("layer_heads", "layer_intermediate"))


def make_layer(config: CapgapGPTNeoXConfig, i: int) -> GPTNeoXLayer:
    layer = GPTNeoXLayer(with_values(config, intermediate_size=config.layer_intermediate[i]), i)
    # the stock attention derives its head size, rotary dims and scaling from hidden_size /
    # heads: build it at its own width (heads x head_dim), then let its projections read and
    # write the residual stream's hidden_size
    heads, hidden = config.layer_heads[i], config.hidden_size
    width = heads * config.head_dim
    attention = GPTNeoXAttention(with_values(config, hidden_size=width, num_attention_heads=heads), i)
    attention.query_key_value = nn.Linear(hidden, 3 * width, bias=config.attention_bias)
    attention.dense = nn.Linear(width, hidden, bias=config.attention_bias)
    layer.attention = attention
    return share_config(layer, config)


class CapgapGPTNeoXForCausalLM(GPTNeoXForCausalLM):
    config_class = CapgapGPTNeoXConfig

    def __init__(self, config: CapgapGPTNeoXConfig):
        super().__init__(config)
        self.gpt_neox.layers = nn.ModuleList(make_layer(config, i) for i in range(config.num_hidden_layers))
