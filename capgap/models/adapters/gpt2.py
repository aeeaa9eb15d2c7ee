"""GPT-2: Conv1D (transposed weights), fused q|k|v blocks, learned positions, tied head."""

import torch

from .base import Adapter, select, units


class GPT2Adapter(Adapter):
    attn_width_is_hidden = True  # GPT2Attention sizes c_attn and split_size from hidden_size
    intermediate_key = "n_inner"

    def layers(self):
        return self.model.transformer.h

    def embeddings(self):
        return [self.model.transformer.wte, self.model.transformer.wpe]

    def norms(self):
        return [n for l in self.layers() for n in (l.ln_1, l.ln_2)] + [self.model.transformer.ln_f]

    def attn(self, layer):
        return layer.attn

    def mlp(self, layer):
        return layer.mlp

    def attn_in(self, layer):
        return [layer.attn.c_attn]

    def attn_out(self, layer):
        return layer.attn.c_proj

    def ffn_in(self, layer):
        return [layer.mlp.c_fc]

    def ffn_out(self, layer):
        return layer.mlp.c_proj

    def slice_heads(self, layer, groups):
        # c_attn's output is three blocks q | k | v, each split_size wide, heads contiguous
        attn, hd = layer.attn, self.head_dim
        width, head = attn.split_size, units(groups, hd)
        select(attn.c_attn, "out", torch.cat([b * width + head for b in range(3)]))
        select(attn.c_proj, "in", head)
        attn.num_heads = len(groups)
        attn.split_size = attn.embed_dim = len(head)
