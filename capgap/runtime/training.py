"""Build a Lightning Trainer from config, fit with resume, and evaluate once at the end.

Budgets are global tokens (capgap.runtime.budget): steps = tokens / tokens per optimizer step.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.fabric.utilities.load import _METADATA_FILENAME  # meta.pt: a sharded checkpoint's last file
from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import open_dict

from capgap.runtime import distributed, sharding
from capgap.runtime.budget import (  # noqa: F401
    apply_global_batch,
    devices_per_node,
    steps_for,
    tokens_per_step,
    uses_cuda,
    world_size,
)
from capgap.runtime.errors import CapgapError
from capgap.runtime.progress import StageBar
from capgap.runtime.resume import AtomicCheckpointIO, RNGState

CAPGAP_KEYS = ("checkpoint_every",)  # in conf/trainer but not Trainer arguments
# null in conf/trainer means Lightning's default (capgap.runtime.schema: a key only some
# configs set is null elsewhere, which keeps every run's config hash), except for this one,
# where null means "by steps, not epochs"
NULL_IS_MEANT = ("check_val_every_n_epoch",)
FSDP_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")


def resolve_precision(precision) -> str:
    """`auto`: bf16 mixed precision on GPUs that have it, full fp32 elsewhere."""
    if precision not in (None, "auto"):
        return str(precision)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def precision_dtype(precision) -> torch.dtype | None:
    """The 16-bit dtype a Lightning precision computes in, None for full precision (32, 64).

    Mixed and true alike: "bf16-mixed", "bf16-true" and Lightning's alias "bf16" give bfloat16;
    "16-mixed", "16-true" and "16" give float16. The one rule for every pass that has to match
    training's arithmetic (autocast outside the Trainer, the teacher's weights, the benchmark).
    """
    precision = resolve_precision(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def is_fsdp(trainer_cfg) -> bool:
    s = trainer_cfg.get("strategy")
    name = s if isinstance(s, str) else (s or {}).get("_target_", "")
    return "fsdp" in str(name).lower()


def check_trainer(trainer_cfg) -> None:
    """What Lightning would only find out after a teacher is loaded (or in a child process),
    as one line before anything is written."""
    acc = str(trainer_cfg.get("accelerator", "auto"))
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        hint = ("trainer.accelerator=cpu shards over CPU processes" if is_fsdp(trainer_cfg)
                else "use trainer=cpu")
        raise CapgapError(f"trainer.accelerator={acc}: no CUDA device is visible ({hint})")
    precision = resolve_precision(trainer_cfg.get("precision"))
    if is_fsdp(trainer_cfg) and precision not in FSDP_PRECISIONS:
        raise CapgapError(f"trainer=fsdp: trainer.precision={precision} is not one of {', '.join(FSDP_PRECISIONS)} "
                          "(what Lightning's ModelParallelStrategy supports)")
    n = devices_per_node(trainer_cfg)
    have = torch.cuda.device_count() if uses_cuda(trainer_cfg) else (os.cpu_count() or 1)
    if n < 1 or n > have:
        kind = "CUDA devices" if uses_cuda(trainer_cfg) else "CPU cores (one process each)"
        raise CapgapError(f"trainer.devices={trainer_cfg.get('devices')} asks for {n} devices but this "
                          f"machine has {have} {kind}")


def check_sharded_distill(trainer_cfg, distill_cfg) -> None:
    """What trainer=fsdp does not run in a distillation, as one line before anything is written."""
    d = distill_cfg
    if is_fsdp(trainer_cfg) and (d.get("chain") or d.get("assistants") not in (None, "none", "off")):
        # each stage prunes the next from the assistant just trained, which trainer=fsdp leaves in shards
        raise CapgapError("trainer=fsdp does not run teacher-assistant chains (distill.chain, "
                          "distill.assistants); use trainer=gpu")


def device_for(trainer_cfg) -> torch.device:
    """This process's device under the trainer config, known before the Trainer exists (the
    teacher's passes before training run there too): its local rank's, whoever started it."""
    if uses_cuda(trainer_cfg):
        return torch.device("cuda", distributed.current().topology.local_rank)
    return torch.device("cpu")


class RanksEnvironment(ClusterEnvironment):
    """Tells Lightning the ranks capgap.runtime.distributed started (or srun, torchrun, each node did):
    the processes exist already, so Lightning launches none, and uses the process group that
    is initialised. Lightning's own environments would each read one launcher's variables."""

    def __init__(self, topology: distributed.Topology):
        super().__init__()
        self.t = topology
        self._world, self._rank = topology.world_size, topology.rank

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self.t.address

    @property
    def main_port(self) -> int:
        return self.t.port

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        return self._world

    def set_world_size(self, size: int) -> None:
        self._world = size

    def global_rank(self) -> int:
        return self._rank

    def set_global_rank(self, rank: int) -> None:
        self._rank = rank

    def local_rank(self) -> int:
        return self.t.local_rank

    def node_rank(self) -> int:
        return self.t.node_rank


def _alone() -> RanksEnvironment:
    return RanksEnvironment(distributed.Topology(0, 0, 0, 1, 1, "single"))


def autocast_for(trainer_cfg, device: torch.device):
    """The training precision's autocast for passes outside the Trainer (teacher scoring,
    selection, generation), so they compute as training does. Under *-true training the models
    train with 16-bit weights; autocast brings the fp32 models of these passes to that arithmetic."""
    dtype = precision_dtype(trainer_cfg.get("precision"))
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def single_process(trainer_cfg):
    """The trainer config on one process, for what rank 0 builds alone: a cache entry (a micro
    teacher) must not depend on the device count of the job that happened to build it."""
    out = trainer_cfg.copy()
    with open_dict(out):
        out.update(devices=1, num_nodes=None, strategy=None, accumulate_grad_batches=None)
    return out


def build_trainer(trainer_cfg, find_unused: bool = False, shard: bool = False, **overrides) -> L.Trainer:
    """A Trainer from conf/trainer with capgap's own keys taken out and precision resolved, on
    the running job's ranks; a one-device config inside a job of several runs on this process
    alone (single_process). `find_unused`: a module some of whose parameters sit out some steps
    (progressive stages) under DDP. `shard`: a CausalLMModule's training, which trainer=fsdp
    shards (capgap.runtime.sharding); the other passes (scoring, evaluation alone) keep each rank's
    model whole under DDP."""
    kwargs = {k: v for k, v in trainer_cfg.items()
              if k not in CAPGAP_KEYS and (v is not None or k in NULL_IS_MEANT)}
    if is_fsdp(trainer_cfg) and not shard:
        kwargs["strategy"] = "auto"
    # callbacks the config adds (`trainer.callbacks=[...]`) join capgap's own
    callbacks = [*(instantiate(kwargs.pop("callbacks", None)) or []), *overrides.pop("callbacks", [])]
    kwargs.update(overrides, callbacks=callbacks)
    kwargs["precision"] = resolve_precision(kwargs.get("precision"))
    # the data modules give each rank its own share of the batches (capgap.data.datamodule):
    # Lightning's DistributedSampler would pad the validation split and reseed by the job's seed
    kwargs["use_distributed_sampler"] = False
    job = distributed.current()
    if world_size(trainer_cfg) == 1 and job.world_size > 1:
        local = job.topology.local_rank
        kwargs.update(devices=[local] if uses_cuda(trainer_cfg) else 1, num_nodes=1, strategy="auto",
                      plugins=[*(kwargs.get("plugins") or []), _alone()])
    elif job.world_size > 1:
        kwargs["plugins"] = [*(kwargs.get("plugins") or []), RanksEnvironment(job.topology)]
        if kwargs.get("strategy") in (None, "auto", "ddp"):
            # buffers (rotary frequencies, causal masks) never change: broadcasting them before
            # each forward is a collective that a rank with one evaluation batch fewer never joins
            kwargs["strategy"] = DDPStrategy(forward_sync_buffers=False, find_unused_parameters=find_unused)
    if kwargs.get("enable_progress_bar", True):  # bars titled by stage (capgap.runtime.progress)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), StageBar()]
    return instantiate(kwargs)


def make_logger(logger_cfg, run_dir: Path):
    """The Lightning logger conf/logger names, writing under the run dir; keys at null are
    left to the logger's own defaults (the schema has the keys of several loggers)."""
    return instantiate({k: v for k, v in logger_cfg.items() if v is not None}, save_dir=str(run_dir))


def has_checkpoint(path: Path) -> bool:
    """Whether a run can resume from `path`: a file (one process, DDP), or the folder a sharded
    run writes (trainer=fsdp: Lightning's ModelParallelStrategy saves each rank's shard through
    torch.distributed.checkpoint, then rank 0 writes the folder's meta.pt, so a first save cut
    short has none). AtomicCheckpointIO does not apply there: that strategy writes no file
    through a CheckpointIO, so a run killed while overwriting its folder can leave it mixed."""
    return path.is_file() or (path / _METADATA_FILENAME).is_file()


def throughput_monitor(window: int) -> ThroughputMonitor:
    """Lightning's tokens/s (and MFU, from the module's flops_per_batch on GPUs Lightning
    knows the peak of), logged as train/device/items_per_sec and train/device/mfu."""
    return ThroughputMonitor(batch_size_fn=lambda b: b["input_ids"].shape[0],
                             length_fn=lambda b: b["input_ids"].numel(), window_size=max(2, window))


def fit(module, datamodule, trainer_cfg, logger_cfg, run_dir: Path, ckpt_dir: Path,
        max_steps: int, extra_callbacks=(), find_unused: bool = False) -> tuple[L.Trainer, dict]:
    """Train to `max_steps`, resuming from `ckpt_dir/last.ckpt` when an earlier run of the same
    config was interrupted, then evaluate on the whole validation split.

    Returns the trainer and the final validation metrics as floats.
    """
    ckpt_dir = Path(ckpt_dir)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                 every_n_train_steps=trainer_cfg.get("checkpoint_every", 200))
    logger = make_logger(logger_cfg, run_dir) if logger_cfg else False
    accum = int(trainer_cfg.get("accumulate_grad_batches", 1) or 1)
    world = world_size(trainer_cfg)
    # Lightning counts val_check_interval in micro-batches of one process, and refuses one
    # longer than an epoch; short runs still evaluate at their end. One pass of the corpus is what
    # train_dataloader() yields without train_steps: len(train_set) samples, drop_last
    # (tests/test_training.py holds the two equal)
    batches = max(1, len(datamodule.train_set) // datamodule.batch_size // world)
    interval = trainer_cfg.get("val_check_interval")
    interval = min(interval * accum if interval else batches, batches, max_steps * accum)
    # then the loader yields exactly this run's micro-batches, this rank's share of them: one
    # epoch, so a resume never meets an epoch end
    datamodule.train_steps = max_steps * accum * world
    module.flops_per_batch = module.flops_per_token() * datamodule.tokens_per_batch
    log_every = int(trainer_cfg.get("log_every_n_steps", 10) or 10)
    # AtomicCheckpointIO writes single-file checkpoints; trainer=fsdp's distributed ones bypass
    # any CheckpointIO (see has_checkpoint)
    trainer = build_trainer(trainer_cfg, find_unused=find_unused, shard=True, max_steps=max_steps, max_epochs=-1,
                            val_check_interval=interval,
                            logger=logger, default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()],
                            callbacks=[checkpoint, RNGState(), throughput_monitor(log_every * accum),
                                       *extra_callbacks])
    datamodule.even_batches = sharding.is_sharded(trainer.strategy)
    last = ckpt_dir / "last.ckpt"
    resume = distributed.current().broadcast(has_checkpoint(last))  # rank 0's checkpoint, rank 0's word
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    # the periodic evaluation sees a fixed prefix; the final figure uses every validation block
    datamodule.eval_batches = None
    results = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return trainer, {k: float(v) for k, v in results.items()}

