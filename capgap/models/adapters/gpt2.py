"""GPT-2: Conv1D (transposed weights), fused q|k|v blocks, learned positions, tied head."""

import torch

from .base import Adapter, select, units


class GPT2Adapter(Adapter):
    attn_width_is_hidden = True  # GPT2Attention sizes c_attn and split_size from hidden_size
    intermediate_key = "n_inner"
    paths = dict(layers="transformer.h", embeddings=["transformer.wte", "transformer.wpe"],
                 final_norm="transformer.ln_f", layer_norms=["ln_1", "ln_2"], mid_norm="ln_2", attn="attn", mlp="mlp",
                 attn_in=["attn.c_attn"], attn_out="attn.c_proj", ffn_in=["mlp.c_fc"], ffn_out="mlp.c_proj")

    def slice_heads(self, layer, groups):
        # c_attn's output is three blocks q | k | v, each split_size wide, heads contiguous
        attn, hd = layer.attn, self.head_dim
        width, head = attn.split_size, units(groups, hd)
        select(attn.c_attn, "out", torch.cat([b * width + head for b in range(3)]))
        select(attn.c_proj, "in", head)
        attn.num_heads = len(groups)
        attn.split_size = attn.embed_dim = len(head)
