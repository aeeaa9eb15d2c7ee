"""Distillation losses: the paper's α·CE(labels) + (1 − α)·soft-CE(student ‖ teacher), and the
divergences the study can swap in for the soft-CE term.

Convention: every function here takes logits and *aligned* targets, i.e. ``targets[..., t]`` is
the token that ``logits[..., t, :]`` should predict. HF models are trained with unshifted labels
(the model shifts inside); :func:`shift_labels` turns those into aligned targets without
slicing the logits, so the last position simply becomes ignored. Positions whose target is
``IGNORE`` (-100) count in neither CE nor the KD term, and both terms are means over the
counted positions.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from capgap.data.blocks import IGNORE
from capgap.models.lm_loss import at_least_fp32
from capgap.runtime.errors import CapgapError

# Divergences D(teacher, student) per token, on temperature-scaled log-probabilities [..., V] → [...].
# The first argument is always the student, so the registry can call them alike.

def soft_ce(s_logp, t_logp):
    """−Σ p_t log p_s, the paper's term: forward KL plus the teacher's entropy (same gradient)."""
    return -(t_logp.exp() * s_logp).sum(-1)


def forward_kl(s_logp, t_logp):
    """KL(p_t ‖ p_s): mean-seeking, the student covers every mode of the teacher."""
    return (t_logp.exp() * (t_logp - s_logp)).sum(-1)


def reverse_kl(s_logp, t_logp):
    """KL(p_s ‖ p_t): mode-seeking (MiniLLM), the student concentrates where the teacher is sure."""
    return (s_logp.exp() * (s_logp - t_logp)).sum(-1)


def jsd(s_logp, t_logp, beta=0.5):
    """β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m) with m = β·p_t + (1 − β)·p_s (β = 0.5: the usual JSD)."""
    _check_unit("beta", beta)
    if beta in (0, 1):
        # m is then one of the two distributions and the other term is weighted 0: a loss of
        # exactly zero with no gradient. TRL's GKD reads these ends as the two KLs instead
        kl = {0: "forward_kl (distill=fkl)", 1: "reverse_kl (distill=rkl)"}[beta]
        raise CapgapError(f"distill.loss.beta={beta} makes jsd a zero loss with no gradient; "
                          f"for what TRL means by beta={beta} use distill.loss.name={kl}")
    # logaddexp keeps log m finite where both probabilities underflow
    log_m = torch.logaddexp(t_logp + _log(beta), s_logp + _log(1 - beta))
    kl_t = (t_logp.exp() * (t_logp - log_m)).sum(-1)
    kl_s = (s_logp.exp() * (s_logp - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def total_variation(s_logp, t_logp):
    """½ Σ |p_t − p_s|: bounded, so a few wildly wrong tokens cannot dominate the batch."""
    return 0.5 * (t_logp.exp() - s_logp.exp()).abs().sum(-1)


def skew_forward_kl(s_logp, t_logp, skew=0.1):
    """KL(p_t ‖ a·p_t + (1 − a)·p_s), a = skew (DistiLLM's α): forward KL with a bounded gradient."""
    _check_unit("skew", skew)
    log_mix = torch.logaddexp(t_logp + _log(skew), s_logp + _log(1 - skew))
    return (t_logp.exp() * (t_logp - log_mix)).sum(-1)


def skew_reverse_kl(s_logp, t_logp, skew=0.1):
    """KL(p_s ‖ a·p_s + (1 − a)·p_t), a = skew: the skewed counterpart of reverse KL."""
    _check_unit("skew", skew)
    log_mix = torch.logaddexp(s_logp + _log(skew), t_logp + _log(1 - skew))
    return (s_logp.exp() * (s_logp - log_mix)).sum(-1)


def _log(x):
    return math.log(x) if x > 0 else -math.inf


def _check_unit(name, value):
    if not 0.0 <= value <= 1.0:
        raise CapgapError(f"distill.loss.{name}={value} must lie in [0, 1]")


DIVERGENCES = {
    "soft_ce": soft_ce,
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "total_variation": total_variation,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
}


class Losses(NamedTuple):
    loss: torch.Tensor  # alpha·ce + kd_weight·kd, the one to backpropagate
    ce: torch.Tensor    # mean CE against the labels (T = 1)
    kd: torch.Tensor    # mean T²·D(teacher, student)


class KDLoss:
    """alpha·CE(labels) + kd_weight·T²·D(teacher, student), means over non-ignored positions.

    kd_weight defaults to 1 − alpha (the paper's convex mix, alpha = 0.5); set both to weigh
    the task and KD terms independently. Extra keywords (beta, skew) go to the divergence.
    """

    def __init__(self, name="soft_ce", alpha=0.5, temperature=1.0, kd_weight=None, **div_kwargs):
        if name not in DIVERGENCES:
            raise CapgapError(f"distill.loss.name={name!r} is unknown; choose one of {', '.join(DIVERGENCES)}")
        if temperature <= 0:
            raise CapgapError(f"distill.loss.temperature={temperature} must be positive")
        self.name, self.alpha, self.temperature = name, alpha, temperature
        self.kd_weight = 1.0 - alpha if kd_weight is None else kd_weight
        # null is unset: the schema has beta and skew for every loss (capgap.runtime.schema)
        self.div_kwargs = div_kwargs = {k: v for k, v in div_kwargs.items() if v is not None}
        # fail on a bad or misspelt beta/skew at construction, not at the first training step
        try:
            DIVERGENCES[name](torch.zeros(1, 2), torch.zeros(1, 2), **div_kwargs)
        except TypeError:
            raise CapgapError(f"distill.loss: {name} takes no {', '.join(div_kwargs)}") from None

    def sums(self, student_logits, teacher_logits, targets):
        """(CE summed over counted tokens, T²·D summed over counted tokens, count); the chunked
        loss adds these up across chunks and divides once, so chunking cannot change the mean."""
        s = at_least_fp32(student_logits)  # bf16/fp16: a softmax over 50k classes wants fp32
        valid = targets != IGNORE
        T = self.temperature
        # at T = 1 the CE and KD terms share one log-softmax: each [tokens, vocab] saved counts
        s_logp1 = F.log_softmax(s, dim=-1)
        picked = s_logp1.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
        ce = -torch.where(valid, picked, 0.0).sum()
        s_logp = s_logp1 if T == 1 else F.log_softmax(s / T, dim=-1)
        t = at_least_fp32(teacher_logits)
        t_logp = F.log_softmax(t if T == 1 else t / T, dim=-1)
        d = DIVERGENCES[self.name](s_logp, t_logp, **self.div_kwargs)
        # where, not a product: garbage teacher logits at a padded position stay out of the sum
        kd = torch.where(valid, d, 0.0).sum() * T * T
        return ce, kd, valid.sum()

    def combine(self, ce_sum, kd_sum, count):
        n = count.clamp(min=1)  # a batch with nothing to predict gives 0, not NaN
        ce, kd = ce_sum / n, kd_sum / n
        return Losses(self.alpha * ce + self.kd_weight * kd, ce, kd)

    def __call__(self, student_logits, teacher_logits, targets):
        """Unchunked: logits [..., V], aligned targets [...] (see shift_labels)."""
        return self.combine(*self.sums(student_logits, teacher_logits, targets))

    def __repr__(self):
        extra = "".join(f", {k}={v}" for k, v in self.div_kwargs.items())
        return (f"KDLoss({self.name!r}, alpha={self.alpha}, kd_weight={self.kd_weight}, "
                f"temperature={self.temperature}{extra})")


def get_kd_loss(name="soft_ce", **kwargs) -> KDLoss:
    """The loss config names: `distill.loss.name=jsd distill.loss.beta=0.3`."""
    return KDLoss(name, **kwargs)
