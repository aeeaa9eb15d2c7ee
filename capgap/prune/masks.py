"""Pruning masks ξ (head groups), ν (FFN neurons), μ (hidden dims), applied by hooks.

All masks start at one and are differentiable leaves, so |∂L/∂mask| at one is the
expressiveness score. Zeroing entries per a plan gives a model whose logits equal the
sliced student's, which is how slicing is tested. Hooks, not edited HF source, so any
attention implementation (sdpa, eager, flash) works unchanged.
"""

from contextlib import contextmanager

import torch


class Masks:
    def __init__(self, adapter, requires_grad: bool = True):
        layers = adapter.layers()
        p = next(adapter.model.parameters())
        # the model's dtype: a fp32 mask would silently upcast bf16 activations
        ones = lambda *shape: torch.ones(*shape, dtype=p.dtype, device=p.device, requires_grad=requires_grad)
        self.heads = ones(len(layers), adapter.n_groups)          # ξ
        self.neurons = ones(len(layers), adapter.n_neurons(layers[0]))  # ν
        self.hidden = ones(adapter.hidden)                       # μ, shared by all layers

    def tensors(self) -> list[torch.Tensor]:
        return [self.heads, self.neurons, self.hidden]

    @classmethod
    def from_plan(cls, adapter, plan) -> "Masks":
        """Ones on what the plan keeps, zeros elsewhere (layer dropping is not maskable)."""
        if len(plan.layers) != len(adapter.layers()):
            raise ValueError("masks cannot express dropped layers")
        m = cls(adapter, requires_grad=False)
        for t in m.tensors():
            t.zero_()
        m.hidden[plan.hidden] = 1
        for i, (heads, neurons) in enumerate(zip(plan.heads, plan.neurons)):
            m.heads[i, heads] = 1
            m.neurons[i, neurons] = 1
        return m


def _scale_input(mask):
    return lambda module, args: (args[0] * mask,) + args[1:]


def _scale_output(mask):
    def hook(module, args, out):
        return (out[0] * mask,) + tuple(out[1:]) if isinstance(out, tuple) else out * mask
    return hook


@contextmanager
def applied(masks: Masks, adapter):
    """Hooks the masks into adapter.model for the duration of the block."""
    width = adapter.heads_per_group * adapter.head_dim
    mu = masks.hidden
    handles = []
    for i, layer in enumerate(adapter.layers()):
        # ξ scales each group's slice of the attention output projection's input,
        # which is exactly the group's contribution to the residual
        xi = masks.heads[i].repeat_interleave(width)
        handles.append(adapter.attn_out(layer).register_forward_pre_hook(_scale_input(xi)))
        # ν on act(gate)·up (or act(fc)), the input of the down projection
        handles.append(adapter.ffn_out(layer).register_forward_pre_hook(_scale_input(masks.neurons[i])))
        for sub in (adapter.attn(layer), adapter.mlp(layer)):
            handles.append(sub.register_forward_hook(_scale_output(mu)))
    for emb in adapter.embeddings():
        handles.append(emb.register_forward_hook(_scale_output(mu)))

    # μ zeroes pruned dims of the residual stream, but a norm over all D dims would still
    # divide by D (and LayerNorm would subtract a mean that counts the zeros), so the masked
    # model would differ from the sliced one whose norms see only the kept dims. Where μ has
    # zeros, recompute each norm over the kept dims only and leave the pruned dims at zero;
    # this is exact, not an approximation. Where μ is all nonzero (scoring, μ = 1) the stock
    # norm runs untouched, so the unmasked model is bit-identical to the original.
    kept = (mu != 0).nonzero().squeeze(1)
    if len(kept) < len(mu):
        def norm_hook(module, args, out):
            y = out.new_zeros(out.shape)
            y[..., kept] = adapter.norm(module, args[0][..., kept], kept)
            return y
        for norm in adapter.norms():
            handles.append(norm.register_forward_hook(norm_hook))
    try:
        yield masks
    finally:
        for h in handles:
            h.remove()
