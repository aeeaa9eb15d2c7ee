"""GPT-NeoX (Pythia): fused, per-head interleaved QKV; LayerNorm; optional parallel residual."""

from .base import Adapter, select, units


class GPTNeoXAdapter(Adapter):
    attn_width_is_hidden = True  # GPTNeoXAttention sizes its projections from hidden_size

    def layers(self):
        return self.model.gpt_neox.layers

    def embeddings(self):
        return [self.model.gpt_neox.embed_in]

    def norms(self):
        return [n for l in self.layers() for n in (l.input_layernorm, l.post_attention_layernorm)] + [
            self.model.gpt_neox.final_layer_norm]

    def attn(self, layer):
        return layer.attention

    def mlp(self, layer):
        return layer.mlp

    def attn_in(self, layer):
        return [layer.attention.query_key_value]

    def attn_out(self, layer):
        return layer.attention.dense

    def ffn_in(self, layer):
        return [layer.mlp.dense_h_to_4h]

    def ffn_out(self, layer):
        return layer.mlp.dense_4h_to_h

    def slice_heads(self, layer, groups):
        # v5 views the fused output as [..., heads, 3 * head_size] and chunks q|k|v inside
        # each head, so one head owns 3 * head_size consecutive rows. head_size is kept, so
        # partial rotary (rotary_pct) still covers the same dims of every head.
        hd = self.head_dim
        select(layer.attention.query_key_value, "out", units(groups, 3 * hd))
        select(layer.attention.dense, "in", units(groups, hd))
