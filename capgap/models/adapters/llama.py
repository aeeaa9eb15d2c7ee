"""LLaMA (and SmolLM2): separate q/k/v, grouped-query attention, RMSNorm, SwiGLU, tied or not."""

from .base import Adapter, select, units


class LlamaAdapter(Adapter):
    paths = dict(layers="model.layers", embeddings=["model.embed_tokens"], final_norm="model.norm",
                 layer_norms=["input_layernorm", "post_attention_layernorm"],
                 mid_norm="post_attention_layernorm", attn="self_attn", mlp="mlp",
                 attn_in=["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                 attn_out="self_attn.o_proj", ffn_in=["mlp.gate_proj", "mlp.up_proj"], ffn_out="mlp.down_proj")

    def slice_heads(self, layer, groups):
        # query heads of group g are g*hpg … g*hpg+hpg-1 (repeat_kv order), so a group's
        # query rows are contiguous; num_key_value_groups (the ratio) is unchanged
        a, hd = layer.self_attn, self.head_dim
        q = units(groups, self.heads_per_group * hd)
        select(a.q_proj, "out", q)
        select(a.k_proj, "out", units(groups, hd))
        select(a.v_proj, "out", units(groups, hd))
        select(a.o_proj, "in", q)

    def set_shape(self, groups, neurons):
        self.config.head_dim = self.head_dim  # explicit: hidden_size no longer implies it
        super().set_shape(groups, neurons)
