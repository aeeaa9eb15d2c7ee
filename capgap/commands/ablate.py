"""Ablations of the large-to-small strategies on the micro family, written to docs/ablations.md.

    python -m capgap.commands.ablate [--teacher micro_m --student 400K --tokens 200000 --out docs/ablations.md]

Every variant distills the same pruned student (or, for `scratch`, a fresh one of the same
size) from the same teacher on the same number of training tokens; each row is one
`python run.py task=distill ...` whose command is printed in the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: run.py is there


def variants(tokens: int, assistant: str) -> list[tuple[str, list[str]]]:
    half = tokens // 2
    return [
        ("paper: 0.5·CE + 0.5·soft-CE", ["distill=paper"]),
        ("CE only (no teacher)", ["distill=ce_only"]),
        ("+ hidden-state MSE", ["distill=hidden"]),
        ("+ attention-map KL", ["distill=attention"]),
        # two stages of half the tokens each, so the chain sees the same tokens in all
        (f"teacher assistant ({assistant})", ["distill=paper", f"distill.chain=[{assistant}]",
                                             f"distill.tokens={half}"]),
        ("confidence selection (top 50%)", ["distill=confident"]),
        ("hard-example mining (top 50%)", ["distill=hard"]),
        ("post-distillation CE fine-tuning", ["distill=finetune", f"distill.tokens={tokens - tokens // 4}",
                                              f"distill.finetune.tokens={tokens // 4}"]),
        ("student from scratch (same size)", ["distill=paper", "student=scratch"]),
    ] + ([("progressive, 2 stages", ["distill=progressive"])]
         if (ROOT / "conf" / "distill" / "progressive.yaml").is_file() else [])


def run_variant(args, overrides: list[str], run_dir: Path) -> tuple[dict | None, str, float]:
    base = ["task=distill", f"teacher={args.teacher}", f"student.size={args.student}",
            "prune.multiple=4", f"distill.tokens={args.tokens}", *overrides]
    # later overrides win in Hydra, so a variant's own distill.tokens replaces the default
    command = "python run.py " + " ".join(base)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), *base, "trainer.enable_progress_bar=false",
                          f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None, command, seconds
    return json.loads((run_dir / "metrics.json").read_text()), command, seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m capgap.commands.ablate", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="micro_m")
    p.add_argument("--student", default="400K")
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--assistant", default="700K", help="size of the teacher assistant")
    p.add_argument("--out", default=str(ROOT / "docs" / "ablations.md"))
    p.add_argument("--work", default=str(ROOT / "outputs" / "ablations"))
    args = p.parse_args(argv)

    rows = []
    for i, (name, overrides) in enumerate(variants(args.tokens, args.assistant)):
        metrics, command, seconds = run_variant(args, overrides, Path(args.work) / f"{i}")
        loss = metrics["val_loss"] if metrics else None
        print(f"{name:<40} {'failed' if loss is None else f'{loss:.4f}'}  ({seconds:.0f} s)", flush=True)
        rows.append((name, loss, metrics, command, seconds))

    paper = rows[0][1]
    lines = [
        "# Ablations: strategies for large-to-small distillation (micro family, CPU)",
        "",
        f"Teacher `{args.teacher}`, student `{args.student}` parameters, {args.tokens:,} training tokens "
        "per variant, seed 0, one run each. Held-out loss on the embedded corpus's validation split "
        "(lower is better); Δ is against the paper's loss. Written by "
        f"`python -m capgap.commands.ablate --teacher {args.teacher} --student {args.student} --tokens {args.tokens}`.",
        "",
        "| variant | held-out loss | Δ vs paper | helps? | student params | wall s | command |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for name, loss, metrics, command, seconds in rows:
        if loss is None:
            lines.append(f"| {name} | failed | | | | {seconds:.0f} | `{command}` |")
            continue
        delta = loss - paper
        verdict = "—" if name.startswith("paper") else ("yes" if delta < -0.01 else "no" if delta > 0.01 else "no difference")
        lines.append(f"| {name} | {loss:.4f} | {delta:+.4f} | {verdict} | {metrics.get('student_params', 0):,} "
                     f"| {seconds:.0f} | `{command}` |")
    lines += ["", "One seed per variant and run-to-run noise not measured: a small Δ may not be real. "
              "\"helps?\" says yes only for a gain of more than 0.01 nats, no for a loss of more than "
              "0.01, and no difference in between.", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
