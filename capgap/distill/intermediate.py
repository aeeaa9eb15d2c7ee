"""Intermediate matching: hidden-state MSE and attention-map KL between mapped layers.

Layers are numbered as HF's `output_hidden_states` tuple: 0 is the embeddings, l = 1..n the
output of block l (HF applies the final norm to the last one). Block l's attention
probabilities are `output_attentions[l - 1]`; they exist only with attn_implementation="eager".
"""

import torch
from torch import nn

from capgap.distill.strategy import Strategy, Term
from capgap.models.lm_loss import at_least_fp32
from capgap.runtime.errors import CapgapError

MAPPINGS = ("uniform", "last_k", "explicit")


def layer_map(n_student: int, n_teacher: int, how: str = "uniform", k: int | None = None,
              pairs=None) -> list[tuple[int, int]]:
    """(student_layer, teacher_layer) pairs.

    uniform: every student block l to teacher block ⌊l·n_t/n_s⌋, so the last meets the last;
    last_k: the top k blocks of each, in order; explicit: `pairs` as given, checked.
    """
    if how == "uniform":
        return [(l, max(1, l * n_teacher // n_student)) for l in range(1, n_student + 1)]
    if how == "last_k":
        if k is None or not 1 <= k <= min(n_student, n_teacher):
            raise CapgapError(f"distill.intermediate.k={k} must be between 1 and "
                              f"{min(n_student, n_teacher)} (the shallower model's depth)")
        return [(n_student - k + j, n_teacher - k + j) for j in range(1, k + 1)]
    if how == "explicit":
        pairs = [tuple(p) for p in pairs or ()]
        bad = [p for p in pairs if len(p) != 2 or not (0 <= p[0] <= n_student and 0 <= p[1] <= n_teacher)]
        if not pairs or bad:
            raise CapgapError(f"distill.intermediate.pairs={pairs} needs [student, teacher] layer pairs "
                              f"within 0..{n_student} and 0..{n_teacher}")
        return [(int(s), int(t)) for s, t in pairs]
    raise CapgapError(f"distill.intermediate.mapping={how!r} is unknown; choose one of {', '.join(MAPPINGS)}")


class HiddenStateMSE(Term):
    """Mean over layer pairs of the MSE between projected student and teacher hidden states.

    One learned projection per pair where widths differ (a pruned student is narrower); it is
    a parameter of this module, so the optimiser must see this module. The mean over pairs keeps
    the loss's weight meaningful whatever the number of mapped layers.
    """

    needs = ("hidden_states",)

    def __init__(self, pairs, student_width: int, teacher_width: int, weight: float = 1.0):
        super().__init__(weight)
        self.pairs = list(pairs)
        self.proj = nn.ModuleList(
            nn.Identity() if student_width == teacher_width
            else nn.Linear(student_width, teacher_width, bias=False)
            for _ in self.pairs)

    def forward(self, student_out, teacher_out, mask=None):
        """HF outputs with `hidden_states` (per layer [B, L, H]); mask [B, L] true where a position counts."""
        total = 0.0
        for (s, t), proj in zip(self.pairs, self.proj):
            diff = (at_least_fp32(proj(student_out.hidden_states[s]))
                    - at_least_fp32(teacher_out.hidden_states[t].detach()))
            sq = diff.pow(2).mean(-1)
            total = total + _masked_mean(sq, mask)
        return total / len(self.pairs)


def attention_kl(student_attn, teacher_attn, pairs, head_pairs=None, mask=None, eps=1e-8):
    """Mean over layer pairs, heads and counted query positions of KL(teacher ‖ student) between
    attention distributions over keys.

    `*_attn`: HF `output_attentions`, per block [B, heads, L, L]. `head_pairs`: None to compare
    the mean over heads (works whatever the head counts), or one list of (student_head,
    teacher_head) per layer pair, e.g. the teacher heads a pruned student kept.
    """
    # sdpa/flash attention give None or an empty tuple instead of the probabilities
    if not student_attn or not teacher_attn or any(a is None for a in (*student_attn, *teacher_attn)):
        raise CapgapError("attention-map KL needs attention probabilities: load both models with "
                          "attn_implementation='eager'")
    if any(s < 1 or t < 1 for s, t in pairs):
        raise CapgapError(f"attention-map KL pairs {pairs} name layer 0, the embeddings, which has no attention")
    if head_pairs is not None and len(head_pairs) != len(pairs):
        raise CapgapError(f"distill.intermediate.head_pairs has {len(head_pairs)} lists "
                          f"for {len(pairs)} layer pairs")
    total = 0.0
    for i, (s, t) in enumerate(pairs):
        a_s, a_t = at_least_fp32(student_attn[s - 1]), at_least_fp32(teacher_attn[t - 1].detach())
        if head_pairs is None:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        else:
            hs, ht = zip(*head_pairs[i])
            a_s, a_t = a_s[:, list(hs)], a_t[:, list(ht)]
        # a_t = 0 at masked (future) keys: the factor a_t makes those terms 0, the clamps keep
        # 0·log 0 from turning into NaN
        kl = (a_t * (a_t.clamp_min(eps).log() - a_s.clamp_min(eps).log())).sum(-1)  # [B, heads, L]
        total = total + _masked_mean(kl, None if mask is None else mask[:, None, :].expand_as(kl))
    return total / len(pairs)


class AttentionKL(Term):
    """attention_kl between the mapped layers' head-averaged attention maps, as a loss term."""

    needs = ("attentions",)

    def __init__(self, pairs, weight: float = 1.0):
        super().__init__(weight)
        self.pairs = list(pairs)

    def forward(self, student_out, teacher_out, mask=None):
        return attention_kl(student_out.attentions, teacher_out.attentions, self.pairs, mask=mask)


def width(model) -> int:
    return model.get_input_embeddings().weight.shape[1]


def from_config(d, student, teacher, total_steps: int) -> Strategy:
    """distill.intermediate: hidden-state MSE and attention-map KL at their weights γ (0: off)."""
    node = d.get("intermediate") or {}
    hidden, attention = float(node.get("hidden") or 0.0), float(node.get("attention") or 0.0)
    if not (hidden or attention):
        return Strategy()
    pairs = layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers,
                      node.get("mapping", "uniform"), node.get("k"), node.get("pairs"))
    terms = {}
    if hidden:
        terms["hidden"] = HiddenStateMSE(pairs, width(student), width(teacher), hidden)
    if attention:
        terms["attention"] = AttentionKL(pairs, attention)
    return Strategy(terms=terms)


def _masked_mean(x, mask):
    if mask is None:
        return x.mean()
    mask = mask.to(torch.bool)
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)
