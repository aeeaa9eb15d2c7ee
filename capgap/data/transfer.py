"""The transfer set: which blocks distillation trains on (distill.data_strategy).

none:      the corpus blocks as they are.
generated: blocks sampled from the teacher, each prompted by the first `prompt_tokens` tokens
           of a corpus block; cached on disk by teacher, data and settings (sampling is the
           slow part, and a rerun or another student of the same teacher reuses it).
confident: the `fraction` of corpus blocks the teacher is most confident on, by the mean over
           predicted positions of its max probability (`by: max_prob`) or of the log-probability
           of the true next token (`by: neg_loss`).
hard:      not a data choice: DistillModule keeps, per batch, the sequences where the student
           lags the teacher most (capgap.distill.hard).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from capgap.data.blocks import IGNORE
from capgap.runtime import distributed
from capgap.runtime.atomic import build_value
from capgap.runtime.errors import CapgapError

STRATEGIES = ("none", "generated", "confident", "hard")
BY = ("max_prob", "neg_loss")


class TokenBlocks(Dataset):
    """Fixed-length blocks from a [n, block] tensor, every position a label."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i):
        ids = self.blocks[i].long()
        return {"input_ids": ids, "labels": ids.clone()}


@torch.no_grad()
def confidence_scores(model, dataset, batch_size: int = 16, by: str = "max_prob") -> torch.Tensor:
    """Per block, the model's mean confidence over its predicted (non-padding) positions."""
    if by not in BY:
        raise CapgapError(f"distill.data_strategy.by={by} is not one of {', '.join(BY)}")
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        ids = torch.stack([r["input_ids"] for r in rows]).to(device)
        targets = torch.stack([r["labels"] for r in rows])[:, 1:].to(device)
        valid = targets != IGNORE
        per_token = _per_token(model, ids, targets, by)
        out.append((per_token * valid).sum(1) / valid.sum(1).clamp(min=1))
    return torch.cat(out).cpu()


def _per_token(model, ids, targets, by: str, chunk: int = 256) -> torch.Tensor:
    """[B, L-1] max probability or true-token log-probability, from the final hidden states a
    chunk of positions at a time: the batch's full-vocabulary logits never exist."""
    h = model.base_model(input_ids=ids).last_hidden_state[:, :-1]
    head = model.get_output_embeddings()
    flat_h, flat_y = h.reshape(-1, h.shape[-1]), targets.reshape(-1).clamp(min=0)
    out = torch.empty(flat_y.shape, device=h.device)
    for i in range(0, len(flat_y), chunk):
        logp = F.log_softmax(head(flat_h[i:i + chunk]).float(), dim=-1)
        out[i:i + chunk] = (logp.max(-1).values.exp() if by == "max_prob"
                            else logp.gather(-1, flat_y[i:i + chunk, None]).squeeze(-1))
    return out.view(targets.shape)


def most_confident(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices (ascending) of the round(fraction·n) highest scores; at least one."""
    k = max(1, round(fraction * len(scores)))
    return torch.sort(torch.topk(scores, k).indices).values


@torch.no_grad()
def generate_blocks(model, dataset, n: int, prompt_tokens: int, block_size: int, eos_id: int,
                    temperature: float = 1.0, batch_size: int = 16, seed: int = 0) -> torch.Tensor:
    """[n, block_size] token blocks: each a corpus block's first prompt_tokens tokens continued
    by sampling from `model` to the full length (EOS suppressed until then: no padding)."""
    if not 0 < prompt_tokens < block_size:
        raise CapgapError(f"distill.data_strategy.prompt_tokens={prompt_tokens} must be between 1 and "
                          f"distill.block_size-1 ({block_size - 1})")
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(dataset), (n,), generator=g)
    torch.manual_seed(seed)
    new = block_size - prompt_tokens
    out = []
    for start in range(0, n, batch_size):
        rows = picks[start:start + batch_size]
        prompt = torch.stack([dataset[int(i)]["input_ids"][:prompt_tokens] for i in rows]).to(device)
        seq = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=new,
                             min_new_tokens=new, pad_token_id=eos_id)
        out.append(seq[:, :block_size].cpu())
    return torch.cat(out).to(torch.int32)  # int32: a vocabulary fits, half the disk of int64


def generated_path(cache_dir, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "transfer" / digest / "blocks.pt"


def cached_blocks(path: Path, make) -> tuple[torch.Tensor, bool]:
    """(blocks, made): the cache entry of `path`, made by make() once under its lock (jobs
    that ask at once wait for the first one's sampling and reuse it)."""
    return build_value(path.parent, make, lambda blocks, tmp: torch.save(blocks, tmp / path.name),
                       lambda folder: torch.load(folder / path.name, weights_only=True))


def strategy(d) -> dict:
    """distill.data_strategy as a plain dict with its name checked."""
    s = dict(d.get("data_strategy") or {})
    s.setdefault("name", "none")
    if s["name"] not in STRATEGIES:
        raise CapgapError(f"distill.data_strategy.name={s['name']} is not one of {', '.join(STRATEGIES)}")
    return s


def apply_strategy(d, dm, teacher, teacher_key: str, *, seed: int, cache_dir, tokens: int | None = None) -> dict:
    """Swap dm's training blocks for the transfer set the `distill` settings `d` ask for; info
    for metrics. `teacher_key` names the teacher's weights (a generated set's cache entry).
    `tokens`: the distillation budget (capgap.runtime.budget.token_budget; None while it waits on a
    student size not known before the student is made)."""
    s = strategy(d)
    if s["name"] == "confident":
        fraction = float(s.get("fraction", 0.5))
        if not 0 < fraction <= 1:
            raise CapgapError(f"distill.data_strategy.fraction={fraction} must be in (0, 1]")
        scores = confidence_scores(teacher, dm.train_set, d.batch_size, s.get("by", "max_prob"))
        keep = most_confident(scores, fraction)
        dm.train_set = dm.train_override = Subset(dm.train_set, keep.tolist())
        return {"transfer_blocks": len(keep), "transfer_mean_confidence": float(scores[keep].mean())}
    if s["name"] == "generated":
        n = int(s.get("sequences") or 0)
        if not n:
            if tokens is None:
                raise CapgapError("distill.data_strategy=generated makes as many blocks as the token "
                                  "budget uses, and distill.tokens_per_param ties that to the size of a "
                                  "student not made yet: set student.size, distill.tokens or "
                                  "distill.data_strategy.sequences")
            n = math.ceil(tokens / dm.tokens_per_batch) * d.batch_size  # enough that no block repeats
        settings = {"prompt_tokens": int(s.get("prompt_tokens", 8)),
                    "temperature": float(s.get("temperature", 1.0))}
        key = {"teacher": teacher_key, "data": str(dm.folder), "block": d.block_size, "n": n,
               "seed": seed, **settings}
        # rank 0 samples them on its own (sampling on N ranks would draw N sets); the rest load them
        with distributed.current().zero_first():
            blocks, made = cached_blocks(
                generated_path(cache_dir, key),
                lambda: generate_blocks(teacher, dm.train_set, n, block_size=d.block_size,
                                        eos_id=dm.meta["eos_token_id"], batch_size=d.batch_size,
                                        seed=seed, **settings))
        dm.train_set = dm.train_override = TokenBlocks(blocks)
        return {"transfer_blocks": len(blocks), "transfer_generated": made}
    return {}
