"""trainer=fsdp: fully sharded data parallel for pairs that do not fit one GPU (llama2_7b → 3B).

The student is sharded by Lightning's FSDPStrategy, one unit per decoder layer. The teacher is
not a submodule (it must stay out of the optimiser and checkpoints), so it is sharded here, the
same way: its base model under FSDP with one unit per decoder layer, run in its own forward.
Its LM head stays whole on every GPU: the chunked KD loss reads the head's weight outside any
forward, and a vocabulary × width matrix is small next to the layers (262 MB for LLaMA-2-7B in bf16).
"""

from __future__ import annotations

import torch


def decoder_layers() -> set[type]:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return {GPT2Block, GPTNeoXLayer, LlamaDecoderLayer}


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", **kw):
    """Lightning's FSDPStrategy wrapping each decoder layer (Hydra cannot write a set of classes)."""
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy=decoder_layers(), sharding_strategy=sharding_strategy,
                        use_orig_params=True, **kw)


def shard_teacher(teacher, device: torch.device, sharding_strategy: str = "FULL_SHARD"):
    """Wrap the teacher's base model in FSDP (in place); the LM head stays replicated."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    if teacher.config.tie_word_embeddings:
        # a tied head shares its weight with the sharded embedding: it cannot stay whole
        from capgap.errors import CapgapError
        raise CapgapError("trainer=fsdp shards the teacher's layers but keeps its LM head whole, which a "
                          "teacher with tied embeddings does not allow; use trainer=gpu")
    prefix = teacher.base_model_prefix
    base = getattr(teacher, prefix)
    if isinstance(base, FSDP):
        return teacher
    teacher.get_output_embeddings().to(device)
    setattr(teacher, prefix, FSDP(base, auto_wrap_policy=ModuleWrapPolicy(decoder_layers()),
                                  sharding_strategy=ShardingStrategy[sharding_strategy],
                                  device_id=device, use_orig_params=True))
    return teacher
