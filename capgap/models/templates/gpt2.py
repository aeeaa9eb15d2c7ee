"""A GPT-2 student pruned by capgap: each block has its own widths.

capgap prunes every block to its own number of attention heads and FFN neurons, and the
hidden size on its own, so heads x head size no longer equals the hidden size; no stock
config can say that (GPT2Attention refuses it). This file keeps the stock transformers
classes and builds each block from them at its own widths, so weights, forward pass, KV cache
and generate() are transformers' own. It imports only torch and transformers. Load with
    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
"""

from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block
from transformers.pytorch_utils import Conv1D

from .common import check_widths, share_config, with_values  # capgap: inlined


class CapgapGPT2Config(GPT2Config):
    model_type = "capgap_gpt2"
    head_dim: int | None = None  # explicit: n_embd / n_head is not the head size here
    layer_heads: list[int] | None = None
    layer_intermediate: list[int] | None = None

    def validate_architecture(self):
        check_widths(self, ("layer_heads", "layer_intermediate"))


def make_block(config: CapgapGPT2Config, i: int) -> GPT2Block:
    # one head lets the stock block build its (replaced) attention at any hidden size
    block = GPT2Block(with_values(config, n_inner=config.layer_intermediate[i], n_head=1), layer_idx=i)
    # GPT2Attention derives its width, split and head size from n_embd / n_head: build it at
    # its own width (heads x head_dim), then let its projections read and write the residual
    # stream's n_embd
    heads, hidden = config.layer_heads[i], config.hidden_size
    width = heads * config.head_dim
    attn = GPT2Attention(with_values(config, n_embd=width, n_head=heads), layer_idx=i)
    attn.c_attn = Conv1D(3 * width, hidden)
    attn.c_proj = Conv1D(hidden, width)
    block.attn = attn
    return share_config(block, config)


class CapgapGPT2LMHeadModel(GPT2LMHeadModel):
    config_class = CapgapGPT2Config

    def __init__(self, config: CapgapGPT2Config):
        # the stock blocks super() builds are replaced below; GPT2Attention refuses a hidden
        # size its heads do not divide, so they are built with one head
        heads, config.n_head = config.n_head, 1
        try:
            super().__init__(config)
        finally:
            config.n_head = heads
        self.transformer.h = nn.ModuleList(make_block(config, i) for i in range(config.num_hidden_layers))
