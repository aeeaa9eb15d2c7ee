"""GPT-NeoX (Pythia): fused, per-head interleaved QKV; LayerNorm; optional parallel residual."""

from .base import Adapter, select, units


class GPTNeoXAdapter(Adapter):
    attn_width_is_hidden = True  # GPTNeoXAttention sizes its projections from hidden_size
    paths = dict(layers="gpt_neox.layers", embeddings=["gpt_neox.embed_in"], final_norm="gpt_neox.final_layer_norm",
                 layer_norms=["input_layernorm", "post_attention_layernorm"],
                 mid_norm="post_attention_layernorm", attn="attention", mlp="mlp",
                 attn_in=["attention.query_key_value"], attn_out="attention.dense",
                 ffn_in=["mlp.dense_h_to_4h"], ffn_out="mlp.dense_4h_to_h")

    def mid_norm(self, layer):
        # Pythia's parallel residual adds x + attn(ln1 x) + mlp(ln2 x) in one sum
        return None if self.config.use_parallel_residual else super().mid_norm(layer)

    def slice_heads(self, layer, groups):
        # v5 views the fused output as [..., heads, 3 * head_size] and chunks q|k|v inside
        # each head, so one head owns 3 * head_size consecutive rows. head_size is kept, so
        # partial rotary (rotary_pct) still covers the same dims of every head.
        hd = self.head_dim
        select(layer.attention.query_key_value, "out", units(groups, 3 * hd))
        select(layer.attention.dense, "in", units(groups, hd))
