"""A LLaMA-family student pruned by capgap: each decoder layer has its own widths.

capgap prunes every layer to its own number of attention heads (key/value groups under
grouped-query attention) and FFN neurons; no stock config can say that. This file keeps the
stock transformers classes and builds each decoder layer from the stock class at its own
widths, so weights, forward pass, KV cache and generate() are transformers' own. It imports
only torch and transformers. Load with
    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
"""

import copy

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer


class CapgapLlamaConfig(LlamaConfig):
    model_type = "capgap_llama"
    layer_heads: list[int] | None = None  # query heads of each layer
    layer_kv_heads: list[int] | None = None
    layer_intermediate: list[int] | None = None

    def validate_architecture(self):
        # the stock check (hidden_size divisible by the heads) does not apply: head_dim is
        # explicit and the heads differ per layer
        for key in ("layer_heads", "layer_kv_heads", "layer_intermediate"):
            widths = getattr(self, key)
            if widths is None or len(widths) != self.num_hidden_layers:
                raise ValueError(f"{key} must list one width per layer ({self.num_hidden_layers})")

    def for_layer(self, i: int) -> LlamaConfig:
        """This config as the stock layer class reads it for layer i."""
        layer = copy.copy(self)
        layer.num_attention_heads = self.layer_heads[i]
        layer.num_key_value_heads = self.layer_kv_heads[i]
        layer.intermediate_size = self.layer_intermediate[i]
        return layer


def _share_config(layer: nn.Module, config) -> nn.Module:
    # the per-layer copy only sized the modules; their forward reads the model's config
    # (the attention implementation), which must stay the one set_attn_implementation changes
    for m in layer.modules():
        if getattr(m, "config", None) is not None:
            m.config = config
    return layer


class CapgapLlamaForCausalLM(LlamaForCausalLM):
    config_class = CapgapLlamaConfig

    def __init__(self, config: CapgapLlamaConfig):
        super().__init__(config)
        self.model.layers = nn.ModuleList(
            _share_config(LlamaDecoderLayer(config.for_layer(i), i), config)
            for i in range(config.num_hidden_layers))
