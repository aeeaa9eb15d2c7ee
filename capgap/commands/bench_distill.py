"""`capgap bench distill`: is the Lightning step as fast as a hand-written loop?

Tokens/s and MFU of DistillModule's training step under the Lightning Trainer, measured by
Lightning's ThroughputMonitor, next to a plain PyTorch loop on the same models (a zoo teacher
config and a scratch student of the asked size, random weights: nothing is downloaded), the
same batches, the same loss (chunked_kd_loss, soft-CE + CE at alpha 0.5), AdamW, the same
scheduler and gradient clipping, in one process. MFU counts 6·N_S + 2·N_T FLOPs per token.
Each loop runs `--repeats` times alternating, and the best of each is compared, so a noisy
neighbour on a shared machine does not decide the ratio.
"""

from __future__ import annotations

import copy
import time

from capgap.runtime.confdir import conf_dir


def add_parser(sub):
    p = sub.add_parser("distill", help="DistillModule under Lightning vs a plain PyTorch loop: tokens/s, MFU")
    p.add_argument("--teacher", default=None, help="zoo teacher config (default: pythia_410m on cuda, "
                   "micro_l on cpu)")
    p.add_argument("--student", default=None, help="student size (default: 160M on cuda, 600K on cpu)")
    p.add_argument("--batch", type=int, default=None, help="micro-batch (default: 8)")
    p.add_argument("--block", type=int, default=None, help="tokens per sequence (default 2048 on cuda, 128 on cpu)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per loop (default 20 on cuda, 10 on cpu)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=2, help="runs of each loop, alternating; the best counts")
    p.add_argument("--precision", default=None, help="bf16-mixed (cuda default) or 32-true (cpu default)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s for MFU (default: Lightning's table for the GPU; none on CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")


def build_pair(teacher_name: str, student_size: str):
    """(teacher, student) with random weights: the teacher from conf/teacher/<name>.yaml's
    architecture, the student the scratch config of that family nearest `student_size`."""
    import torch
    from omegaconf import OmegaConf

    from capgap.models.scratch import scratch_config
    from capgap.models.zoo import build_from_config
    from capgap.runtime.errors import CapgapError
    from capgap.runtime.sizes import parse_size

    path = conf_dir() / "teacher" / f"{teacher_name}.yaml"
    if not path.is_file():
        raise CapgapError(f"--teacher={teacher_name}: no {path}")
    node = OmegaConf.load(path)
    config = OmegaConf.to_container(node.config, resolve=True)
    config.setdefault("vocab_size", node.get("vocab_size"))
    torch.manual_seed(0)
    teacher = build_from_config(node.arch, config)
    student = build_from_config(node.arch, scratch_config(teacher, node.arch, parse_size(student_size)))
    return teacher, student


def defaults(args, cuda: bool):
    # on CPU a micro pair: big enough that a step is compute (not Python) bound, small enough
    # for about a minute on two cores
    for key, on_cuda, on_cpu in (("teacher", "pythia_410m", "micro_l"), ("student", "160M", "600K"),
                                 ("batch", 8, 8), ("block", 2048, 128), ("steps", 20, 10),
                                 ("precision", "bf16-mixed", "32-true")):
        if getattr(args, key) is None:
            setattr(args, key, on_cuda if cuda else on_cpu)


def run(args, where: str) -> int:
    """args.device is resolved and checked (capgap.commands.bench.main); `where` names it in the report."""
    import torch

    defaults(args, args.device == "cuda")
    teacher, student = build_pair(args.teacher, args.student)
    n_s = sum(p.numel() for p in student.parameters())
    n_t = sum(p.numel() for p in teacher.parameters())
    flops = _module(args, teacher, student, 1).flops_per_token()  # what MFU counts in training too
    g = torch.Generator().manual_seed(0)
    vocab = student.get_input_embeddings().weight.shape[0]
    n = args.warmup + args.steps
    batches = [{"input_ids": ids, "labels": ids.clone()}
               for ids in torch.randint(0, vocab, (n, args.batch, args.block), generator=g)]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and args.device == "cuda":
        from lightning.fabric.utilities.throughput import get_available_flops

        from capgap.runtime.training import precision_dtype

        peak = get_available_flops(torch.device("cuda"), precision_dtype(args.precision) or torch.float32)
    init = copy.deepcopy(student.state_dict())
    best = {"lightning": 0.0, "plain": 0.0}
    for _ in range(args.repeats):
        for name, loop in (("lightning", lightning_loop), ("plain", plain_loop)):
            student.load_state_dict(init)  # both loops start from the same weights every time
            best[name] = max(best[name], loop(args, teacher, student, batches))
    report(args, where, n_s, n_t, flops, best, peak, torch)
    return 0


def _module(args, teacher, student, total):
    from capgap.distill.module import DistillModule

    return DistillModule(student, teacher, total_steps=total, log_every=10 ** 9, lr=3e-4)


def lightning_loop(args, teacher, student, batches) -> float:
    """Tokens/s of the last `steps` steps, as Lightning's ThroughputMonitor computed it."""
    import lightning as L
    from lightning.pytorch.loggers import Logger

    from capgap.runtime.training import throughput_monitor

    class Capture(Logger):  # the monitor logs through the trainer's logger: keep its last figures
        name, version, last = "capture", 0, {}

        def log_metrics(self, metrics, step=None):
            self.last.update(metrics)

        def log_hyperparams(self, *a, **k):
            pass

    logger = Capture()
    module = _module(args, teacher, student, len(batches))
    trainer = L.Trainer(accelerator=args.device, devices=1, precision=args.precision, max_steps=len(batches),
                        gradient_clip_val=1.0, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[throughput_monitor(args.steps + 1)])
    trainer.fit(module, train_dataloaders=_loader(batches))
    return float(logger.last["train/device/items_per_sec"])


def _loader(batches):
    from torch.utils.data import DataLoader

    return DataLoader(batches, batch_size=None, shuffle=False)  # items are whole batches


def plain_loop(args, teacher, student, batches) -> float:
    """The same step written by hand: forward, chunked KD + CE, backward, clip, AdamW, schedule."""
    import torch

    from capgap.runtime.training import autocast_for, precision_dtype

    dev = torch.device(args.device)
    module = _module(args, teacher, student, len(batches))  # for its optimiser groups and loss only
    module.to(dev)
    teacher.to(device=dev, dtype=precision_dtype(args.precision))
    module.model.train()
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    autocast = autocast_for({"precision": args.precision}, dev)
    t0 = None
    for i, batch in enumerate(batches):
        if i == args.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss = module.compute_loss(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch * args.block / (time.perf_counter() - t0)


def report(args, where, n_s, n_t, flops, best, peak, torch):
    from capgap.runtime.sizes import format_size

    print(f"capgap bench distill: teacher {args.teacher} ({format_size(n_t)}), scratch student "
          f"{format_size(n_s)}, random weights; micro-batch {args.batch} x {args.block}, {args.precision}")
    print(f"  device {where}, torch {torch.__version__}; {args.steps} timed steps after {args.warmup}, "
          f"best of {args.repeats}; FLOPs/token 6·N_S + 2·N_T = {flops:.3e}")
    print(f"{'loop':<11}{'tokens/s':>12}{'MFU':>8}")
    for name in ("lightning", "plain"):
        mfu = f"{100 * best[name] * flops / peak:.1f}%" if peak else "n/a"
        print(f"{name:<11}{best[name]:>12.1f}{mfu:>8}")
    ratio = best["lightning"] / best["plain"]
    print(f"capgap/plain: {ratio:.3f} (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
