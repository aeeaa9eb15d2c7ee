"""A LLaMA-family student pruned by capgap: each decoder layer has its own widths.

capgap prunes every layer to its own number of attention heads (key/value groups under
grouped-query attention) and FFN neurons; no stock config can say that. This file keeps the
stock transformers classes and builds each decoder layer from the stock class at its own
widths, so weights, forward pass, KV cache and generate() are transformers' own. It imports
only torch and transformers. Load with
    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
"""

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from .common import check_widths, share_config, with_values  # capgap: inlined


class CapgapLlamaConfig(LlamaConfig):
    model_type = "capgap_llama"
    layer_heads: list[int] | None = None  # query heads of each layer
    layer_kv_heads: list[int] | None = None
    layer_intermediate: list[int] | None = None

    def validate_architecture(self):
        check_widths(self, ("layer_heads", "layer_kv_heads", "layer_intermediate"))


def make_layer(config: CapgapLlamaConfig, i: int) -> LlamaDecoderLayer:
    layer = LlamaDecoderLayer(with_values(config, num_attention_heads=config.layer_heads[i],
                                          num_key_value_heads=config.layer_kv_heads[i],
                                          intermediate_size=config.layer_intermediate[i]), i)
    return share_config(layer, config)


class CapgapLlamaForCausalLM(LlamaForCausalLM):
    config_class = CapgapLlamaConfig

    def __init__(self, config: CapgapLlamaConfig):
        super().__init__(config)
        self.model.layers = nn.ModuleList(make_layer(config, i) for i in range(config.num_hidden_layers))
