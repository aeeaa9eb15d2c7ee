"""Pruning masks ξ (head groups), ν (FFN neurons), μ (hidden dims), hooked in where MiniMA puts them.

All masks start at one and are differentiable leaves, so |∂L/∂mask| at one is the
expressiveness score. μ sits where MiniMA's modeling_sparsellama.py multiplies its
hidden_mask: on the embeddings, on each sublayer's output and on the residual stream after
each residual add, so every norm reads a masked stream. At μ = 1 the forward is bit-identical
to the model's own; where μ sits changes only its gradient, which is the score. Hooks, not
edited HF source, so any attention implementation (sdpa, eager, flash) works unchanged.
"""

from contextlib import contextmanager

import torch

# Part of the score cache key: scores made with μ placed elsewhere are other scores
# (without the masks after each add, hidden scores rank 0.79-0.94 Spearman with these).
PLACEMENT = "minima"


class Masks:
    def __init__(self, adapter):
        layers = adapter.layers()
        p = next(adapter.model.parameters())
        # the model's dtype: a fp32 mask would silently upcast bf16 activations
        ones = lambda *shape: torch.ones(*shape, dtype=p.dtype, device=p.device, requires_grad=True)
        self.heads = ones(len(layers), adapter.n_groups)          # ξ
        self.neurons = ones(len(layers), adapter.n_neurons(layers[0]))  # ν
        self.hidden = ones(adapter.hidden)                       # μ, shared by all layers

    def tensors(self) -> list[torch.Tensor]:
        return [self.heads, self.neurons, self.hidden]


def _first(out, f):
    """Apply f to a module's output, or to output[0] where it returns a tuple."""
    return (f(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else f(out)


def _scale_input(mask):
    return lambda module, args: (args[0] * mask,) + args[1:]


def _scale_output(mask):
    return lambda module, args, out: _first(out, lambda y: y * mask)


def _mask_both_adds(layer, mid_norm, mu) -> list:
    """μ after each of a sequential block's two adds, s' = (s + a)·μ and s'' = (s' + m)·μ.

    The HF block keeps the first sum t = s + a in a local variable no hook can reach; its
    readers are `mid_norm` and the second add. So the norm's pre-hook records t and feeds it
    t·μ, and the block's output hook adds the t·(μ − 1) the second add missed before the last
    μ: (t + m + t·(μ − 1))·μ = (t·μ + m)·μ, MiniMA's value and gradient. At μ = 1 the
    correction is an exact zero, so the forward stays bit-identical.
    """
    first_sum = []

    def record(module, args):
        first_sum.append(args[0])
        return (args[0] * mu,) + args[1:]

    def correct(module, args, out):
        t = first_sum.pop()
        return _first(out, lambda y: (y + t * (mu - 1)) * mu)

    return [mid_norm.register_forward_pre_hook(record), layer.register_forward_hook(correct)]


@contextmanager
def applied(masks: Masks, adapter):
    """Hooks the masks into adapter.model for the duration of the block."""
    width = adapter.heads_per_group * adapter.head_dim
    mu = masks.hidden
    handles = []
    for i, layer in enumerate(adapter.layers()):
        # ξ scales each group's slice of the attention output projection's input, which is
        # the group's whole contribution (MiniMA scales the group's attention probabilities:
        # the same product, one matmul earlier)
        xi = masks.heads[i].repeat_interleave(width)
        handles.append(adapter.attn_out(layer).register_forward_pre_hook(_scale_input(xi)))
        # ν on act(gate)·up (or act(fc)), the input of the down projection
        handles.append(adapter.ffn_out(layer).register_forward_pre_hook(_scale_input(masks.neurons[i])))
        for sub in (adapter.attn(layer), adapter.mlp(layer)):
            handles.append(sub.register_forward_hook(_scale_output(mu)))
        mid_norm = adapter.mid_norm(layer)
        if mid_norm is None:  # one add per block (parallel residual): its output is the stream after it
            handles.append(layer.register_forward_hook(_scale_output(mu)))
        else:
            handles += _mask_both_adds(layer, mid_norm, mu)
    for emb in adapter.embeddings():
        handles.append(emb.register_forward_hook(_scale_output(mu)))
    try:
        yield masks
    finally:
        for h in handles:
            h.remove()
