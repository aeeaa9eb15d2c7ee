"""`capgap bench`: figures that back docs/benchmarks.md.

kd-loss: peak memory and time of the chunked KD loss against the naive one.
eval:    peak memory of a held-out evaluation through the chunked head against the naive
         forward with labels (full-vocabulary logits of the batch).
distill: tokens/s and MFU of the real DistillModule step under the Lightning Trainer (Lightning's
         ThroughputMonitor) against a plain PyTorch loop on the same models, batch and loss
         (capgap.commands.bench_distill).

For kd-loss and eval each variant runs in a fresh Python process, so neither inherits the other's allocations:
on CUDA the peak is torch.cuda.max_memory_allocated; on CPU torch has no allocator
statistics and tracemalloc does not see its tensors, so the peak is the process's resident
high-water mark (Linux VmHWM, reset through /proc/self/clear_refs once the inputs exist;
getrusage's ru_maxrss where that reset is refused). Either way the figure printed is the
peak minus the memory held just before the loss ran: what the loss itself adds on top of
the hidden states and head weights a training step holds anyway.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("naive", "chunked")
# 16 × 2048 tokens at Pythia's vocabulary: naive logits alone are 6.6 GB in fp32, so CPUs get a
# smaller default batch (the shape is a flag; the report says what ran)
EVAL_BATCH = {"cuda": 16, "cpu": 2}


def parser():
    ap = argparse.ArgumentParser(prog="capgap bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="bench", required=True)
    kd = sub.add_parser("kd-loss", help="chunked vs naive KD loss, forward + backward")
    kd.add_argument("--vocab", type=int, default=50304, help="Pythia's padded vocabulary")
    kd.add_argument("--tokens", type=int, default=None,
                    help="tokens in the batch (default: 8x2048 on cuda, 2048 on cpu)")
    kd.add_argument("--hidden", type=int, default=768, help="hidden width of student and teacher")
    kd.add_argument("--chunk", type=int, default=None, help="tokens per chunk (default: chunked_kd_loss's)")
    kd.add_argument("--loss", default="soft_ce", help="divergence name (capgap.distill.losses)")
    kd.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="hidden states and heads")
    kd.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    kd.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the child process

    ev = sub.add_parser("eval", help="chunked vs naive held-out evaluation (forward with labels)")
    ev.add_argument("--vocab", type=int, default=50304, help="Pythia's padded vocabulary")
    ev.add_argument("--batch", type=int, default=None, help="sequences (default: 16 on cuda, 2 on cpu)")
    ev.add_argument("--block", type=int, default=2048, help="tokens per sequence")
    ev.add_argument("--hidden", type=int, default=256, help="width of the 2-layer GPT-NeoX evaluated")
    ev.add_argument("--layers", type=int, default=2)
    ev.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    ev.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)

    from capgap.commands.bench_distill import add_parser
    add_parser(sub)

    td = sub.add_parser("teacher-dtype", help="KD loss with the teacher in bf16 vs fp32, bf16 autocast")
    td.add_argument("--teacher-path", required=True, help="an HF checkpoint folder (a trained teacher)")
    td.add_argument("--data", required=True, help="a .txt, .jsonl or .parquet file, or a folder of them, "
                    "read as data=local reads it")
    td.add_argument("--batches", type=int, default=8)
    td.add_argument("--batch", type=int, default=8)
    td.add_argument("--block", type=int, default=128)
    td.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    import torch

    # every bench runs on args.device from here on, child processes included (run_child passes it)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        from capgap.runtime.errors import CapgapError
        raise CapgapError("--device cuda: no CUDA device is visible")
    if args.bench == "distill":
        from capgap.commands.bench_distill import run

        return run(args, _where(args, torch))
    if args.bench == "teacher-dtype":
        return teacher_dtype(args)
    if args.bench == "eval":
        if args.batch is None:
            args.batch = EVAL_BATCH[args.device]
        pinned = ["--batch", str(args.batch)]
        if args.variant:
            print(json.dumps(measure_eval(args)))
            return 0
        results = {v: run_child(argv, args, v, pinned) for v in VARIANTS}
        report_eval(args, results, torch)
        return 0
    if args.chunk is None:
        from capgap.models.lm_loss import CHUNK_SIZE
        args.chunk = CHUNK_SIZE
    if args.tokens is None:
        args.tokens = 8 * 2048 if args.device == "cuda" else 2048
    if args.variant:
        print(json.dumps(measure(args)))
        return 0

    results = {v: run_child(argv, args, v, ["--tokens", str(args.tokens)]) for v in VARIANTS}
    report(args, results, torch)
    return 0


def run_child(argv, args, variant, pinned=()):
    cmd = [sys.executable, "-m", "capgap.commands.bench", *list(argv if argv is not None else sys.argv[1:]),
           "--variant", variant, "--device", args.device, *pinned]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_root(), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _root():
    """The folder capgap is imported from (capgap/commands/ is two levels below it)."""
    return str(Path(__file__).resolve().parents[2])


def measure(args):
    import torch
    import torch.nn.functional as F
    from torch import nn

    from capgap.distill.chunked import chunked_kd_loss
    from capgap.distill.losses import get_kd_loss

    dev, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    loss = get_kd_loss(args.loss)
    s_head = nn.Linear(args.hidden, args.vocab, bias=False, device=dev, dtype=dtype)
    t_head = nn.Linear(args.hidden, args.vocab, bias=False, device=dev, dtype=dtype).requires_grad_(False)
    h_s = torch.randn(args.tokens, args.hidden, device=dev, dtype=dtype, requires_grad=True)
    h_t = torch.randn(args.tokens, args.hidden, device=dev, dtype=dtype)
    y = torch.randint(0, args.vocab, (args.tokens,), device=dev)

    def step(n):
        if args.variant == "naive":
            with torch.no_grad():
                t_logits = F.linear(h_t[:n], t_head.weight)
            out = loss(F.linear(h_s[:n], s_head.weight), t_logits, y[:n])
        else:
            out = chunked_kd_loss(h_s[:n], s_head, h_t[:n], t_head, y[:n], loss, args.chunk)
        out.loss.backward()
        return out.loss.item()

    step(min(args.tokens, 8))  # kernels and thread pools up before the clock starts
    h_s.grad = s_head.weight.grad = None
    memory = _Peak(dev)
    t0 = time.perf_counter()
    value = step(args.tokens)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"peak_bytes": memory.peak_above_start(), "seconds": seconds, "loss": value,
            "method": memory.method}


class _Peak:
    """Peak memory above what is held now, by the most honest counter the device offers."""

    def __init__(self, dev):
        import torch

        self.torch, self.dev = torch, dev
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
            self.start, self.method = torch.cuda.memory_allocated(dev), "torch.cuda.max_memory_allocated"
            return
        self.start = _status_kib("VmRSS") * 1024
        try:  # "5" resets the high-water mark to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM reset by /proc/self/clear_refs"
        except OSError:
            self.method = "getrusage ru_maxrss"

    def peak_above_start(self):
        if self.dev.type == "cuda":
            return self.torch.cuda.max_memory_allocated(self.dev) - self.start
        if self.method.startswith("VmHWM"):
            return _status_kib("VmHWM") * 1024 - self.start
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.start


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_eval(args):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from capgap.models.lm_loss import lm_loss

    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
        max_position_embeddings=args.block)).to(dev).eval()
    ids = torch.randint(0, args.vocab, (args.batch, args.block), device=dev)

    @torch.no_grad()
    def evaluate(x):
        if args.variant == "naive":
            return model(input_ids=x, labels=x).loss.item()
        return lm_loss(model, x, x)[0].item()

    evaluate(ids[:1, :8])  # kernels and thread pools up before the clock starts
    memory = _Peak(dev)
    t0 = time.perf_counter()
    value = evaluate(ids)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"peak_bytes": memory.peak_above_start(), "seconds": time.perf_counter() - t0, "loss": value,
            "method": memory.method}


def teacher_dtype(args):
    """The KD term of the paper's loss on held-out blocks, student fixed, teacher in fp32 and in
    bf16, both under the bf16 autocast that bf16-mixed training runs in."""
    import copy

    import torch

    from capgap.data.sources import local_documents
    from capgap.distill.chunked import chunked_kd_loss
    from capgap.distill.losses import KDLoss
    from capgap.models.lm_loss import shift_labels
    from capgap.models.zoo import load_local
    from capgap.runtime.errors import CapgapError

    dev = torch.device(args.device)
    teacher, tok = load_local(args.teacher_path, key="--teacher-path")
    teacher.to(dev).eval()
    torch.manual_seed(0)
    # a student as a pruning run starts one: the teacher with noise, so KD is neither 0 nor chance
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5 * p.std() * torch.randn_like(p))
    # the corpus read as data=local reads it, so a training corpus can be passed as it is
    ids = torch.tensor(tok("\n".join(local_documents(args.data)))["input_ids"])
    n = args.batch * args.block
    blocks = [ids[i * n:(i + 1) * n].view(args.batch, args.block) for i in range(min(args.batches, len(ids) // n))]
    if not blocks:
        raise CapgapError(f"--data={args.data}: {len(ids)} tokens, fewer than one batch of "
                          f"{args.batch} x {args.block} (lower --batch or --block, or give more text)")
    kd = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        t = copy.deepcopy(teacher).to(dtype)
        total = 0.0
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            for b in blocks:
                b = b.to(dev)
                s_h = student.base_model(input_ids=b).last_hidden_state
                t_h = t.base_model(input_ids=b).last_hidden_state
                out = chunked_kd_loss(s_h, student.get_output_embeddings(), t_h, t.get_output_embeddings(),
                                      shift_labels(b), KDLoss())
                total += float(out.kd)
        kd[name] = total / len(blocks)
    print(f"capgap bench teacher-dtype: {args.teacher_path}, {len(blocks)} x {args.batch} x {args.block} "
          f"tokens, bf16 autocast, device {_where(args, torch)}")
    print(f"KD (soft-CE) with fp32 teacher {kd['fp32']:.5f}, with bf16 teacher {kd['bf16']:.5f}: "
          f"change {kd['bf16'] - kd['fp32']:+.5f} ({100 * (kd['bf16'] - kd['fp32']) / kd['fp32']:+.3f}%)")
    return 0


def _where(args, torch) -> str:
    return torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def _table(results) -> None:
    """Peak memory, time and loss per variant, and the chunked/naive ratio against the 25% target."""
    mib = 2 ** 20
    print(f"{'variant':<10}{'peak_MiB':>12}{'time_s':>10}{'loss':>12}")
    for v in VARIANTS:
        r = results[v]
        print(f"{v:<10}{r['peak_bytes'] / mib:>12.1f}{r['seconds']:>10.3f}{r['loss']:>12.5f}")
    ratio = results["chunked"]["peak_bytes"] / max(results["naive"]["peak_bytes"], 1)
    print(f"chunked/naive peak: {100 * ratio:.1f}% (target <= 25%: {'met' if ratio <= 0.25 else 'NOT met'})")


def report_eval(args, results, torch):
    where = _where(args, torch)
    tokens = args.batch * args.block
    scaled = "" if tokens >= 16 * 2048 else f" (scaled down from 16 x 2048 = 32768 for {args.device}: --batch 16)"
    print(f"capgap bench eval: held-out loss of a {args.layers}-layer GPT-NeoX (hidden {args.hidden}), no grad")
    print(f"  vocab {args.vocab}, {args.batch} x {args.block} = {tokens} tokens{scaled}")
    print(f"  device {where}, torch {torch.__version__}")
    print(f"  memory: {results['naive']['method']}, in a fresh process per variant, minus the memory held "
          f"once model and batch exist")
    _table(results)


def report(args, results, torch):
    where = _where(args, torch)
    scaled = "" if args.tokens >= 8 * 2048 else f" (scaled down from the issue's 8x2048 = 16384 for {args.device})"
    print(f"capgap bench kd-loss: {args.loss} KD + CE (alpha 0.5), forward + backward, {args.dtype}")
    print(f"  vocab {args.vocab}, tokens {args.tokens}{scaled}, hidden {args.hidden} (student and teacher), "
          f"chunk {args.chunk} tokens")
    print(f"  device {where}, torch {torch.__version__}")
    print(f"  memory: {results['naive']['method']}, in a fresh process per variant, minus the memory held "
          f"once the inputs (hidden states, heads) exist: what the loss adds")
    _table(results)


if __name__ == "__main__":
    sys.exit(main())
