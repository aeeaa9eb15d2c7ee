"""Expressiveness scores I = E|∂L/∂mask|, their disk cache, and the baselines.

L is the teacher's own LM cross-entropy on its training data; no weight moves. Each
layer's score vector is divided by its L2 norm so layers compete fairly in a global
ranking. One scoring serves every sparsity of a teacher: it is cached under
(teacher, data, N, method, where μ sits).
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from capgap.models.adapters import adapter_for
from capgap.models.adapters.base import linear_weight
from capgap.models.lm_loss import lm_loss
from capgap.prune.masks import PLACEMENT, Masks, applied
from capgap.runtime import distributed
from capgap.runtime.atomic import build_value_collective
from capgap.runtime.errors import CapgapError

METHODS = ("expressiveness", "random", "magnitude")


@dataclass
class Scores:
    heads: torch.Tensor    # [layers, key/value groups]
    neurons: torch.Tensor  # [layers, FFN neurons]
    hidden: torch.Tensor   # [hidden]
    method: str
    raw: dict = field(default_factory=dict, repr=False)  # before normalisation, for inspection

    def to_dict(self) -> dict:
        return {"heads": self.heads, "neurons": self.neurons, "hidden": self.hidden,
                "method": self.method, "raw": self.raw}


def normalise(t: torch.Tensor) -> torch.Tensor:
    """Each layer's (row's) scores over their L2 norm."""
    return t / t.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)


def _scores(method, heads, neurons, hidden) -> Scores:
    raw = {"heads": heads, "neurons": neurons, "hidden": hidden}
    return Scores(normalise(heads), normalise(neurons), normalise(hidden), method, raw)


def _lm_inputs(batch: dict, device) -> dict:
    keys = ("input_ids", "labels", "attention_mask")
    return {k: batch[k].to(device) for k in keys if batch.get(k) is not None}


class ScoreAccumulator:
    """Masks hooked into the model and running sums of |∂L/∂mask|, one batch at a time.

    Split into loss() and collect() so PrunerModule can do the backward in between.
    """

    def __init__(self, model):
        self.model, self.adapter = model, adapter_for(model)
        self.masks = Masks(self.adapter)
        self.sums = [torch.zeros(t.shape, device=t.device) for t in self.masks.tensors()]
        self.batches = 0  # counted with their weights: a rank's padding batch counts 0

    def loss(self, batch: dict) -> torch.Tensor:
        self.model.eval()  # dropout off: score the teacher as it predicts
        device = self.masks.hidden.device
        inputs = _lm_inputs(batch, device)
        with applied(self.masks, self.adapter):
            # chunked through the LM head: no [tokens, vocab] logits of the batch
            return lm_loss(self.model, inputs.pop("input_ids"), inputs.pop("labels"), **inputs)[0]

    def collect(self, weight: float = 1.0) -> None:
        # |.| per batch, then the mean: E|∂L/∂m|, not |E ∂L/∂m| (signs would cancel)
        for s, t in zip(self.sums, self.masks.tensors()):
            s += weight * t.grad.abs().float()
            t.grad = None
        self.batches += weight

    def result(self, total=lambda t: t) -> Scores:
        """The mean over every batch every rank scored: `total` adds a tensor up over the ranks
        (PrunerModule passes its strategy's sum), so N ranks give one process's mean."""
        sums = [total(s.clone()) for s in self.sums]
        count = total(torch.tensor(float(self.batches), device=self.sums[0].device))
        return _scores("expressiveness", *[(s / count.clamp_min(1)).cpu() for s in sums])


def random_scores(model, seed: int = 0) -> Scores:
    a = adapter_for(model)
    g = torch.Generator().manual_seed(seed)
    L = len(a.layers())
    return _scores("random", torch.rand(L, a.n_groups, generator=g),
                   torch.rand(L, a.n_neurons(a.layers()[0]), generator=g), torch.rand(a.hidden, generator=g))


@torch.no_grad()
def magnitude_scores(model) -> Scores:
    """L2 norm of the weights each unit writes with: its columns of the output projection
    (heads, neurons) and its column of the token embedding (hidden dims)."""
    a = adapter_for(model)
    heads, neurons = [], []
    for layer in a.layers():
        w = linear_weight(a.attn_out(layer)).float()
        heads.append(w.reshape(w.shape[0], a.n_groups, -1).norm(dim=(0, 2)))
        neurons.append(linear_weight(a.ffn_out(layer)).float().norm(dim=0))
    hidden = model.get_input_embeddings().weight.float().norm(dim=0)
    return _scores("magnitude", torch.stack(heads).cpu(), torch.stack(neurons).cpu(), hidden.cpu())


@torch.no_grad()
def block_influence(model, batches, n_batches: int) -> torch.Tensor:
    """ShortGPT's BI per layer: 1 − cos(layer input, layer output), mean over tokens."""
    a = adapter_for(model)
    layers = a.layers()
    sums = torch.zeros(len(layers))
    count = 0

    def hook(i):
        def fn(module, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            sums[i] += (1 - torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)).mean().cpu()
        return fn

    handles = [l.register_forward_hook(hook(i), with_kwargs=True) for i, l in enumerate(layers)]
    try:
        model.eval()
        device = next(model.parameters()).device
        for _, batch in zip(range(n_batches), batches):
            model(**{k: v for k, v in _lm_inputs(batch, device).items() if k != "labels"})
            count += 1
    finally:
        for h in handles:
            h.remove()
    return sums / max(count, 1)


def cache_path(teacher_id: str, data_id: str, n_batches: int, method: str, root) -> Path:
    """The scores file of a cache entry (a folder with its completion marker) under `root`,
    the run's paths.cache_dir. The key holds where μ sits (masks.PLACEMENT): scores made with
    it placed elsewhere are other scores."""
    key = json.dumps({"teacher": teacher_id, "data": data_id, "n_batches": n_batches,
                      "method": f"{method}/{PLACEMENT}"}, sort_keys=True)
    return Path(root) / "scores" / hashlib.sha256(key.encode()).hexdigest()[:16] / "scores.pt"


def load_scores(path: Path) -> Scores:
    return Scores(**torch.load(path, weights_only=True))


def cached_scores(path: Path, compute) -> Scores:
    """Scores from the cache entry of `path`, computing them (`compute()`) once under its lock:
    jobs that ask at once wait for the first one's scoring and reuse it. Under several ranks
    every rank scores its share of the batches, and rank 0 publishes."""
    scores, _ = build_value_collective(path.parent, compute,
                                       lambda s, tmp: torch.save(s.to_dict(), tmp / path.name),
                                       lambda folder: load_scores(folder / path.name), distributed.current())
    return scores


def baseline_scores(model, method: str, seed: int = 0) -> Scores:
    """The scores that need no data: the baselines expressiveness must beat. Expressiveness
    itself is made by PrunerModule (capgap.prune.student.scores_for), its one path."""
    if method == "random":
        return random_scores(model, seed)
    if method == "magnitude":
        return magnitude_scores(model)
    raise CapgapError(f"prune.method={method} is not one of {', '.join(METHODS)}")
