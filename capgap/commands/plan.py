"""`capgap plan`: what a study costs, before anything runs.

Takes the overrides `run.py` takes (`capgap plan experiment=pythia_law trainer.devices=8`),
composes every point of the sweep with Hydra's compose API (sweep lists on the command line
and the preset's hydra.sweeper.params, expanded as the basic sweeper does), loads no weights,
and prints per point the student and teacher parameters, the tokens trained, the FLOPs and
the GPU-hours at a given peak and MFU, then the total.

FLOPs per point: (6·N_S + 2·N_T)·D for distillation (student forward and backward, teacher
forward) plus the expressiveness scoring, 4·N_T per scored token (forward, and a backward
through the activations only: no weight gradients), counted once per teacher because the
scores are cached. Periodic evaluation is left out (a few percent at the presets' cadence).
"""

from __future__ import annotations

import argparse
import itertools

from capgap.models import teacher_name
from capgap.runtime.confdir import conf_dir
from capgap.runtime.errors import CapgapError

H100_BF16_DENSE_TFLOPS = 989.0


def parser():
    ap = argparse.ArgumentParser(prog="capgap plan", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="as for run.py: experiment=pythia_law teacher=... key=a,b")
    ap.add_argument("--mfu", type=float, default=0.40, help="model FLOPs utilisation assumed (default 0.40)")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                    help="peak dense TFLOP/s of one GPU (default 989: H100 SXM, bf16)")
    return ap


def grid(overrides: list[str]) -> list[list[str]]:
    """One override list per job: the command line's sweeps and hydra.sweeper.params, crossed.
    Call inside hydra.initialize_config_dir."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parse = OverridesParser.create().parse_overrides
    try:
        parsed = parse(overrides)
        fixed, sweeps = [], {}
        for o in parsed:
            if o.is_sweep_override():
                sweeps[o.get_key_element()] = list(o.sweep_string_iterator())
            else:
                fixed.append(o.input_line)
        base = compose("config", overrides=fixed, return_hydra_config=True)
    except Exception as e:  # Hydra's errors are many classes and many lines; one line here
        raise CapgapError(f"cannot compose the config: {str(e).splitlines()[0]}") from None
    # the preset's sweep, except for keys the command line sets (there, as in Hydra, it wins)
    given = {o.get_key_element() for o in parsed}
    params = base.hydra.sweeper.get("params") or {}
    for key, value in params.items():
        for o in parse([f"{key}={value}"]):
            if o.get_key_element() not in given:
                sweeps[o.get_key_element()] = list(o.sweep_string_iterator())
    keys = list(sweeps)
    return [fixed + [f"{k}={v}" for k, v in zip(keys, combo)]
            for combo in itertools.product(*(sweeps[k] for k in keys))]


def point_cost(cfg) -> dict:
    """Sizes, tokens and FLOPs of one composed job, from the config alone."""
    from capgap.runtime import budget as training
    from capgap.runtime.sizes import parse_size

    t = int(cfg.teacher.params)
    size = cfg.student.get("size")
    s = parse_size(size) if size not in (None, "") else int(t * (1 - cfg.prune.sparsity))
    d = cfg.distill
    training.apply_global_batch(cfg.trainer, d.batch_size, d.block_size, d.get("global_batch_tokens"))
    per_step = training.tokens_per_step(cfg.trainer, d.batch_size * d.block_size)
    budget = training.token_budget(d, s)
    tokens = training.steps_for(budget, d.batch_size * d.block_size, cfg.trainer) * per_step
    p = cfg.prune
    scored = p.n_batches * p.batch_size * p.block_size if (
        cfg.student.init == "pruned" and p.method == "expressiveness") else 0
    return {"teacher": teacher_name(cfg.teacher), "T": t, "S": s, "tokens": tokens, "per_step": per_step,
            "accumulation": int(cfg.trainer.get("accumulate_grad_batches") or 1),
            "devices": training.world_size(cfg.trainer), "skipped": s >= t,
            "distill_flops": (6 * s + 2 * t) * tokens, "scoring_flops": 4 * t * scored}


def plan(overrides: list[str]) -> list[dict]:
    from hydra import compose, initialize_config_dir

    points = []
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        for job in grid(overrides):
            try:
                cfg = compose("config", overrides=job)
            except Exception as e:
                raise CapgapError(f"cannot compose {' '.join(job)}: {str(e).splitlines()[0]}") from None
            points.append({"overrides": job, **point_cost(cfg)})
    scored = set()
    for pt in points:  # expressiveness scores are cached per teacher: the first point pays
        if pt["skipped"] or pt["teacher"] in scored:
            pt["scoring_flops"] = 0
        scored.add(pt["teacher"])
    return points


def main(argv=None) -> int:
    from capgap.runtime.sizes import format_size

    args = parser().parse_args(argv)
    if not 0 < args.mfu <= 1 or args.peak_tflops <= 0:
        raise CapgapError(f"--mfu={args.mfu} must be in (0, 1] and --peak-tflops={args.peak_tflops} positive")
    points = plan(args.overrides)
    rate = args.peak_tflops * 1e12 * args.mfu
    print(f"capgap plan: {len(points)} points; GPU-hours at {args.mfu:.0%} MFU of {args.peak_tflops:g} "
          f"TFLOP/s per GPU; FLOPs = (6·S + 2·T)·tokens + scoring 4·T per scored token (once per teacher)")
    print(f"{'#':>3} {'teacher':<14} {'T':>7} {'S':>7} {'tokens':>8} {'step tok':>9} {'accum':>5} "
          f"{'FLOPs':>9} {'GPU-h':>9}")
    total_flops, total_tokens, run = 0, 0, 0
    for i, pt in enumerate(points):
        head = (f"{i:>3} {pt['teacher']:<14} {format_size(pt['T']):>7} {format_size(pt['S']):>7}")
        if pt["skipped"]:
            print(f"{head}  skipped: student not below teacher (the study records it, trains nothing)")
            continue
        flops = pt["distill_flops"] + pt["scoring_flops"]
        total_flops, total_tokens, run = total_flops + flops, total_tokens + pt["tokens"], run + 1
        print(f"{head} {format_size(pt['tokens']):>8} {format_size(pt['per_step']):>9} {pt['accumulation']:>5} "
              f"{flops:>9.2e} {flops / rate / 3600:>9.1f}")
    hours = total_flops / rate / 3600
    devices = points[0]["devices"] if points else 1
    print(f"total: {run} points trained ({len(points) - run} skipped), {format_size(total_tokens)} tokens, "
          f"{total_flops:.3e} FLOPs, {hours:,.1f} GPU-hours ({hours / devices:,.1f} h wall on {devices} "
          f"GPU{'s' if devices > 1 else ''} per job, jobs one after another)")
    return 0
