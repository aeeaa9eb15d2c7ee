"""The KD loss computed from final hidden states, a chunk of tokens at a time through each LM head.

Naively the student's and the teacher's logits for the whole batch exist at once, in fp32,
together with their log-softmaxes and the gradient: about six [tokens, vocab] fp32 tensors
(measured by `capgap bench kd-loss`), 20 GB for 8×2048 tokens at Pythia's 50,304 vocabulary. Here a chunk's logits are made,
used and freed before the next chunk's exist: the gradient w.r.t. the chunk's student logits
is taken right away (forward and backward of the head in one pass, as Liger's fused linear
cross-entropy does), pushed through the head into two accumulators, and the backward of the
whole thing only scales those by the incoming gradient. Peak memory beyond the inputs is

    ≈ 8 · chunk_size · vocab · 4 bytes   (the chunk's logits and their softmax temporaries)
    + vocab · hidden · 4 bytes           (fp32 gradient of the student head)
    + tokens · hidden · 4 bytes          (gradient of the student hidden states)

independent of the number of tokens, so a bigger batch costs only its hidden states.
Ignored positions are dropped before any logits are made, so padding costs nothing.
"""

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from capgap.data.blocks import IGNORE
from capgap.distill.losses import KDLoss, Losses
from capgap.models.lm_loss import CHUNK_SIZE, at_least_fp32


def chunked_kd_loss(student_hidden, student_head, teacher_hidden, teacher_head, targets,
                    loss: KDLoss | None = None, chunk_size: int = CHUNK_SIZE) -> Losses:
    """KD (and CE) loss from final hidden states [..., H] and aligned targets [...].

    Heads are the models' `get_output_embeddings()` (nn.Linear, tied or not). Equal in value
    and gradient to `loss(student_head(student_hidden), teacher_head(teacher_hidden), targets)`;
    only `.loss` carries the gradient (`.ce` and `.kd` are for logging), so weigh the terms
    through the KDLoss (alpha, kd_weight).
    """
    loss = loss or KDLoss()
    keep = (targets.reshape(-1) != IGNORE).nonzero().squeeze(1)
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1]).index_select(0, keep)
    h_t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).index_select(0, keep)
    y = targets.reshape(-1).index_select(0, keep)
    w_s, b_s = student_head.weight, student_head.bias
    w_t, b_t = teacher_head.weight, teacher_head.bias
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (h_s, w_s, b_s)):
        total, ce, kd = _ChunkedKD.apply(h_s, w_s, b_s, h_t, w_t, b_t, y, loss, chunk_size)
        return Losses(total, ce, kd)
    with torch.no_grad():
        ce, kd, n, _ = _chunk_pass(h_s, w_s, b_s, h_t, w_t, b_t, y, loss, chunk_size, want=())
        return loss.combine(ce, kd, n)


def _chunk_pass(h_s, w_s, b_s, h_t, w_t, b_t, y, loss, chunk_size, want):
    """Sums of CE and T²·D over all tokens; with `want` ⊆ {h, w, b}, also the gradients of the
    weighted mean loss w.r.t. those, accumulated chunk by chunk."""
    n = torch.tensor(len(y), device=y.device)
    denom = n.clamp(min=1)
    grads = {}
    if "h" in want:
        grads["h"] = torch.empty_like(h_s)
    if "w" in want:  # fp32 accumulator: summing many chunks in bf16 would lose the small ones
        grads["w"] = torch.zeros_like(w_s, dtype=torch.float32)
    if "b" in want:
        grads["b"] = torch.zeros_like(b_s, dtype=torch.float32)
    ce_sum = kd_sum = torch.zeros((), device=y.device)
    for i in range(0, len(y), chunk_size):
        hs, ht, yc = h_s[i:i + chunk_size], h_t[i:i + chunk_size], y[i:i + chunk_size]
        with torch.no_grad():
            t_logits = F.linear(ht, w_t, b_t)
            s_logits = F.linear(hs, w_s, b_s)
            # the graph starts at the logits: the head's part of the backward is done by hand
            # below, so no [vocab, hidden] gradient is ever made per chunk
            s_logits = at_least_fp32(s_logits)
        with torch.enable_grad():
            s_logits.requires_grad_(bool(want))
            ce, kd, _ = loss.sums(s_logits, t_logits, yc)
            if want:
                part = (loss.alpha * ce + loss.kd_weight * kd) / denom
                g, = torch.autograd.grad(part, s_logits)
        ce_sum, kd_sum = ce_sum + ce.detach(), kd_sum + kd.detach()
        del t_logits, s_logits  # free this chunk's logits before the next chunk's exist
        if not want:
            continue
        if "h" in want:
            grads["h"][i:i + chunk_size] = g.to(w_s.dtype) @ w_s
        if "w" in want:
            grads["w"].addmm_(g.t(), hs.to(torch.float32))
        if "b" in want:
            grads["b"] += g.sum(0)
        del g
    return ce_sum, kd_sum, n, grads


class _ChunkedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, y, loss, chunk_size):
        want = tuple(k for k, need in zip("hwb", ctx.needs_input_grad[:3]) if need)
        ce, kd, n, grads = _chunk_pass(h_s, w_s, b_s, h_t, w_t, b_t, y, loss, chunk_size, want)
        ctx.grads = [grads.get("h"), _cast(grads.get("w"), w_s), _cast(grads.get("b"), b_s)]
        out = loss.combine(ce, kd, n)
        ctx.mark_non_differentiable(out.ce, out.kd)
        return out.loss, out.ce, out.kd

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        # hand the stored gradients over, scaled in place (a scaled loss: grad accumulation,
        # AMP): no second [vocab, hidden] tensor and no host sync to test for a scale of 1
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("chunked_kd_loss computes its gradient once; backward twice is not supported")
        scaled = [None if g is None else g.mul_(grad_loss) for g in grads]
        return (*scaled, None, None, None, None, None, None)


def _cast(g, like):
    return None if g is None else g.to(like.dtype)
