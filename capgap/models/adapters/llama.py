"""LLaMA (and SmolLM2): separate q/k/v, grouped-query attention, RMSNorm, SwiGLU, tied or not."""

import torch

from .base import Adapter, select, units


class LlamaAdapter(Adapter):
    def layers(self):
        return self.model.model.layers

    def embeddings(self):
        return [self.model.model.embed_tokens]

    def norms(self):
        return [n for l in self.layers() for n in (l.input_layernorm, l.post_attention_layernorm)] + [
            self.model.model.norm]

    def attn(self, layer):
        return layer.self_attn

    def mlp(self, layer):
        return layer.mlp

    def attn_in(self, layer):
        a = layer.self_attn
        return [a.q_proj, a.k_proj, a.v_proj]

    def attn_out(self, layer):
        return layer.self_attn.o_proj

    def ffn_in(self, layer):
        return [layer.mlp.gate_proj, layer.mlp.up_proj]

    def ffn_out(self, layer):
        return layer.mlp.down_proj

    def slice_heads(self, layer, groups):
        # query heads of group g are g*hpg … g*hpg+hpg-1 (repeat_kv order), so a group's
        # query rows are contiguous; num_key_value_groups (the ratio) is unchanged
        a, hd = layer.self_attn, self.head_dim
        q = units(groups, self.heads_per_group * hd)
        select(a.q_proj, "out", q)
        select(a.k_proj, "out", units(groups, hd))
        select(a.v_proj, "out", units(groups, hd))
        select(a.o_proj, "in", q)

    def norm(self, module, x, kept):
        # LlamaRMSNorm's own arithmetic (fp32 statistics), over the kept dims only
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
        return module.weight[kept] * h.to(x.dtype)

    def set_shape(self, groups, neurons):
        self.config.head_dim = self.head_dim  # explicit: hidden_size no longer implies it
        super().set_shape(groups, neurons)
