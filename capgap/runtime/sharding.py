"""trainer=fsdp: fully sharded data parallel for pairs that do not fit one device (llama2_7b → 3B).

torch's FSDP2 (`fully_shard`) under Lightning's ModelParallelStrategy, which runs on CUDA (nccl)
and on CPU processes (gloo) alike. The LightningModule shards in `configure_model`
(`shard_module`): the student one unit per decoder layer, then its root (embeddings, final
norm, LM head); the learned projections of intermediate terms one unit each, so their gradients
are reduced too. The losses read the LM head's weight outside any forward (the chunked KD and
CE, capgap.distill.chunked), so each step runs as a forward of the student's root (`in_forward`):
its parameters are whole for the whole step and their gradients reduced after it.

The teacher is not a submodule (it must stay out of the optimiser and checkpoints), so it is
sharded apart, one unit per decoder layer, each gathered for its forward and freed after it
(`shard_teacher`). The rest stays whole on every rank: the KD loss reads the LM head's weight
outside any forward, a tied head is the embedding, and a vocabulary × width matrix is small next
to the layers (262 MB for LLaMA-2-7B in bf16); the teacher gets no gradients, so whole weights
need no reduction. Its base model is no unit either: transformers finds which outputs a model can
record (hidden states, attentions: the intermediate terms) by its class, which fully_shard changes.
"""

from __future__ import annotations

# the student's method that runs a function as a forward of its root unit (in_forward)
STEP = "capgap_step"


def decoder_layers() -> set[type]:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return {GPT2Block, GPTNeoXLayer, LlamaDecoderLayer}


def fsdp_strategy(**kw):
    """Lightning's ModelParallelStrategy with every rank in the data-parallel (sharding)
    dimension and none in tensor parallelism; the module shards itself (shard_module). One
    process has nothing to shard over: Lightning's default there (and no process group of
    Lightning's own, which would outlive the job)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from capgap.runtime import distributed

    world = distributed.current().world_size
    if world == 1:
        return "auto"
    return ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1, **kw)


def is_sharded(strategy) -> bool:
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy)


def _mesh(module):
    return module.device_mesh["data_parallel"]


def _is_fsdp(module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _shard_layers(model, mesh, **kw) -> None:
    from torch.distributed.fsdp import fully_shard

    kinds = tuple(decoder_layers())
    layers = [m for m in model.modules() if isinstance(m, kinds)]
    if not layers:
        from capgap.runtime.errors import CapgapError
        raise CapgapError(f"trainer=fsdp shards GPT-2, GPT-NeoX and LLaMA decoder layers; "
                          f"{type(model).__name__} has none of them (use trainer=gpu)")
    for layer in layers:
        fully_shard(layer, mesh=mesh, **kw)


def shard_module(module) -> None:
    """Shard a CausalLMModule's student (and a DistillModule's term projections) over the
    strategy's device mesh. Idempotent: the final `trainer.validate` after fit, and a later
    stage (fine-tuning) on the same student, find it sharded and leave it."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh, student = _mesh(module), module.model
    if not _is_fsdp(student):
        _shard_layers(student, mesh)
        fully_shard(student, mesh=mesh)
        # a plain function on the instance, made a forward method of the root unit (the
        # public hook for "a method other than forward"): see in_forward
        setattr(student, STEP, lambda fn, *args, **kw: fn(*args, **kw))
        register_fsdp_forward_method(student, STEP)
    for term in getattr(module, "terms", {}).values():
        if any(True for _ in term.parameters()) and not _is_fsdp(term):
            fully_shard(term, mesh=mesh)


def in_forward(model, fn, *args, **kw):
    """`fn(*args, **kw)` as a forward of `model`'s root unit when it is sharded: its parameters
    (the LM head's among them) whole inside, its gradients reduced after the backward."""
    step = getattr(model, STEP, None)
    return step(fn, *args, **kw) if step is not None else fn(*args, **kw)


def shard_teacher(teacher, mesh) -> None:
    """Shard the teacher's decoder layers (in place), each its own root unit that frees its
    gathered weights after each forward (a root keeps them by default, for a backward the teacher
    never runs); the rest stays whole. Idempotent."""
    if any(_is_fsdp(m) for m in teacher.modules()):
        return
    _shard_layers(teacher, mesh, reshard_after_forward=True)


def full_state_dict(model) -> dict | None:
    """The whole state dict of a sharded model, gathered to CPU (a collective: every rank calls
    it; only rank 0 needs the result); None for a model that is not sharded."""
    if not _is_fsdp(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
