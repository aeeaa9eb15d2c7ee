"""A causal LM's next-token loss without the whole batch's logits: final hidden states through
the LM head one chunk of tokens at a time (capgap.distill.chunked does the same for the KD
terms). Pruning's scores, every training loop and the benchmarks share it."""

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from capgap.data.blocks import IGNORE

# 256 tokens × 50k vocab ≈ 50 MB per fp32 logits tensor; a [256, hidden] matmul still keeps a
# GPU busy (Liger's heuristic, tokens·hidden/vocab, gives 256 too at 8×2048 tokens and GPT-2 widths)
CHUNK_SIZE = 256


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """HF-style labels [B, L] (unshifted) → aligned targets [B, L]: position t targets labels[t+1]."""
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def at_least_fp32(x):
    """bf16/fp16 → fp32, fp64 kept: softmaxes over a vocabulary or a sequence want the range."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def chunked_ce(hidden, head, targets, chunk_size: int = CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean CE, number of predicted tokens) from final hidden states [..., H] and aligned
    targets [...], one chunk of logits at a time. Differentiable: each chunk runs under
    torch.utils.checkpoint, so its logits are rebuilt in the backward instead of kept, and
    no more than one chunk's logits exist at once in either pass."""
    keep = (targets.reshape(-1) != IGNORE).nonzero().squeeze(1)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    y = targets.reshape(-1).index_select(0, keep)
    grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
    total = torch.zeros((), device=h.device)
    for i in range(0, len(y), chunk_size):
        hc, yc = h[i:i + chunk_size], y[i:i + chunk_size]
        if grad:
            total = total + torch.utils.checkpoint.checkpoint(_ce_sum, hc, head.weight, head.bias, yc,
                                                              use_reentrant=False)
        else:
            total = total + _ce_sum(hc, head.weight, head.bias, yc)
    n = torch.tensor(len(y), device=h.device)
    return total / n.clamp(min=1), n


def _ce_sum(h, w, b, y):
    return F.cross_entropy(at_least_fp32(F.linear(h, w, b)), y, reduction="sum")


def lm_loss(model, input_ids, labels, chunk_size: int = CHUNK_SIZE, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """A Hugging Face causal LM's next-token CE against unshifted labels, as `model(input_ids,
    labels=labels).loss`, but through the base model's final hidden states and chunk by chunk
    through the LM head: (mean, predicted-token count). `kw` goes to the base model."""
    h = model.base_model(input_ids=input_ids, **kw).last_hidden_state
    return chunked_ce(h, model.get_output_embeddings(), shift_labels(labels), chunk_size)
