"""Students from scratch: a scaled-down random model sharing the teacher's tokenizer, its width
chosen so the parameter count lands nearest the target (student=scratch)."""

from __future__ import annotations

import torch

from capgap.models.params import count_params
from capgap.models.zoo import build_from_config


def _width_and_heads(hidden: int, head_dim: int):
    """Widths in steps of 8 up to the teacher's, each with the head count whose head size is
    nearest the teacher's (whole heads only): finer than whole heads of the teacher's size,
    which on small models jump past the target by 20% or more."""
    for width in range(8, hidden + 1, 8):
        divisors = [h for h in range(1, width + 1) if width % h == 0]
        yield width, min(divisors, key=lambda h: abs(width / h - head_dim))


def scratch_config(teacher, arch: str, size: int) -> dict:
    """The teacher's depth, FFN ratio and about its head size, at the width whose total
    count lands nearest `size`."""
    c = teacher.config
    hidden, heads = c.hidden_size, c.num_attention_heads
    ffn_ratio = (getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden) / hidden
    same = arch == c.model_type
    best = None
    for width, h in _width_and_heads(hidden, hidden // heads):
        cfg = c.to_dict() if same else {
            "vocab_size": c.vocab_size, "num_hidden_layers": c.num_hidden_layers,
            "max_position_embeddings": getattr(c, "max_position_embeddings", None) or c.n_positions,
            "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
            "tie_word_embeddings": c.tie_word_embeddings}
        for k in ("model_type", "architectures", "transformers_version", "_name_or_path", "dtype"):
            cfg.pop(k, None)
        cfg.update(hidden_size=width, num_attention_heads=h, intermediate_size=int(round(ffn_ratio * width)))
        if "num_key_value_heads" in cfg or arch == "llama":
            cfg["num_key_value_heads"] = h
        if arch == "gpt2":
            cfg["n_inner"] = cfg["intermediate_size"]
        with torch.device("meta"):
            n = count_params(build_from_config(arch, cfg))["total"]
        if best is None or abs(n - size) < abs(best[0] - size):
            best = (n, cfg)
    return best[1]


def scratch_model(teacher, arch: str | None, size: int, seed: int):
    """A randomly initialised `arch` (default: the teacher's) of about `size` parameters."""
    arch = arch or teacher.config.model_type
    torch.manual_seed(seed)
    return build_from_config(arch, scratch_config(teacher, arch, size))
