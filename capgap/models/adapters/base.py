"""What every architecture adapter answers: where heads, neurons and hidden dims live, how to cut them.

An adapter is bound to one model instance. Subclasses name the modules; the slicing
arithmetic here is shared. Heads are counted in key/value groups: under grouped-query
attention a group (one K/V head and its query heads) is the smallest unit that can be
removed without changing the attention math of the rest.
"""

from operator import attrgetter

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def select(module: nn.Module, dim: str, idx: torch.Tensor) -> None:
    """Keep only `idx` along a module's input ("in") or output ("out") features, in place.

    Embeddings and norms only have the hidden axis, so `dim` is ignored for them.
    """
    def keep(name, axis):
        p = getattr(module, name, None)
        if p is not None:  # a fresh, trainable Parameter: the cut model is a student to train
            setattr(module, name, nn.Parameter(p.detach().index_select(axis, idx.to(p.device))))

    n = len(idx)
    if isinstance(module, (nn.Linear, Conv1D)):
        conv = isinstance(module, Conv1D)  # GPT-2 stores weight as [in, out]
        keep("weight", int((dim == "in") != conv))
        if dim == "out":
            keep("bias", 0)
        size = {("in", False): "in_features", ("out", False): "out_features", ("in", True): "nx", ("out", True): "nf"}
        setattr(module, size[dim, conv], n)
    elif isinstance(module, nn.Embedding):
        keep("weight", 1)
        module.embedding_dim = n
    else:  # LayerNorm / RMSNorm
        keep("weight", 0)
        keep("bias", 0)
        if isinstance(module, nn.LayerNorm):
            module.normalized_shape = (n,)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """Weight as [out, in] whatever the storage (Conv1D is transposed)."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def units(idx, width: int) -> torch.Tensor:
    """Feature indices of whole units (heads, groups) of `width` features each."""
    idx = torch.as_tensor(list(idx), dtype=torch.long)
    return (idx[:, None] * width + torch.arange(width)).reshape(-1)


class Adapter:
    # True where the stock HF class derives the attention width from hidden_size (GPT-2,
    # GPT-NeoX): such a model only reloads without capgap if heads * head_dim == hidden.
    attn_width_is_hidden = False
    # config key for the FFN width (the rest use the common aliases every HF config maps)
    intermediate_key = "intermediate_size"

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # --- shape of the teacher -------------------------------------------------------
    @property
    def hidden(self) -> int:
        return self.config.hidden_size

    @property
    def head_dim(self) -> int:
        # read from the module, not the config: once hidden is sliced, GPT-2/NeoX configs
        # would derive a wrong head size from hidden_size / num_heads
        attn = self.attn(self.layers()[0])
        return getattr(attn, "head_dim", None) or attn.head_size

    @property
    def n_groups(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads

    @property
    def heads_per_group(self) -> int:
        return self.config.num_attention_heads // self.n_groups

    def n_neurons(self, layer) -> int:
        return linear_weight(self.ffn_out(layer)).shape[1]

    def n_heads(self, layer) -> int:
        """Current query-head count of one (possibly already sliced) layer."""
        return linear_weight(self.attn_out(layer)).shape[1] // self.head_dim

    # --- where things live: each subclass fills `paths` (dotted attribute names) -------
    # layers, embeddings, final_norm: from the model; the rest: from one decoder layer.
    # embeddings: every embedding added into the residual; layer_norms: every norm in a
    # layer that reads the residual; mid_norm: the one that reads the sum after the first of
    # two residual adds; attn / mlp: sublayers whose output (attn: output[0]) is added to the
    # residual; attn_in / ffn_in: projections reading the normed residual.
    paths: dict = {}

    def _get(self, obj, key):
        return attrgetter(self.paths[key])(obj)

    def layers(self) -> nn.ModuleList:
        return self._get(self.model, "layers")

    def embeddings(self) -> list[nn.Module]:
        return [attrgetter(p)(self.model) for p in self.paths["embeddings"]]

    def norms(self) -> list[nn.Module]:
        per_layer = [attrgetter(p)(l) for l in self.layers() for p in self.paths["layer_norms"]]
        return per_layer + [self._get(self.model, "final_norm")]

    def mid_norm(self, layer) -> nn.Module | None:
        """The norm reading the residual after the block's first add; None where the block
        adds attention and MLP in one sum (parallel residual)."""
        return self._get(layer, "mid_norm")

    def attn(self, layer) -> nn.Module:
        return self._get(layer, "attn")

    def mlp(self, layer) -> nn.Module:
        return self._get(layer, "mlp")

    def attn_in(self, layer) -> list[nn.Module]:
        return [attrgetter(p)(layer) for p in self.paths["attn_in"]]

    def attn_out(self, layer) -> nn.Module:
        return self._get(layer, "attn_out")

    def ffn_in(self, layer) -> list[nn.Module]:
        return [attrgetter(p)(layer) for p in self.paths["ffn_in"]]

    def ffn_out(self, layer) -> nn.Module:
        return self._get(layer, "ffn_out")

    def slice_heads(self, layer, groups: torch.Tensor) -> None:
        raise NotImplementedError  # the fused-QKV layout differs per architecture

    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    # --- surgery ----------------------------------------------------------------------
    def slice_neurons(self, layer, idx: torch.Tensor) -> None:
        for m in self.ffn_in(layer):
            select(m, "out", idx)
        select(self.ffn_out(layer), "in", idx)

    def slice_hidden(self, idx: torch.Tensor) -> None:
        head, emb = self.lm_head(), self.model.get_input_embeddings()
        tied = head.weight is emb.weight
        for m in self.embeddings() + self.norms():
            select(m, "out", idx)
        for layer in self.layers():
            for m in self.attn_in(layer) + self.ffn_in(layer):
                select(m, "in", idx)
            select(self.attn_out(layer), "out", idx)
            select(self.ffn_out(layer), "out", idx)
        if tied:
            head.weight = emb.weight
        else:
            select(head, "in", idx)
        self.config.hidden_size = len(idx)

    def keep_layers(self, idx: list[int]) -> None:
        layers = self.layers()
        for i in sorted(set(range(len(layers))) - set(idx), reverse=True):
            del layers[i]  # ModuleList renumbers its keys, so state-dict names stay dense
        for new, layer in enumerate(layers):
            # the KV cache is indexed by layer_idx, so renumber or generate() breaks
            for m in layer.modules():
                if hasattr(m, "layer_idx"):
                    m.layer_idx = new
        self.config.num_hidden_layers = len(layers)

    def set_shape(self, groups: int, neurons: int) -> None:
        """Write a uniform layer shape into the config so stock HF can rebuild the model."""
        self.config.num_attention_heads = groups * self.heads_per_group
        if getattr(self.config, "num_key_value_heads", None):
            self.config.num_key_value_heads = groups
        setattr(self.config, self.intermediate_key, neurons)
