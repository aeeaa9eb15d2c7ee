"""The micro study's universality and distillation-scaling checks (issue 18), from exported runs:

    python docs/micro_law/universality.py --write docs/micro_law/checks.md

- one capacity-gap law per setting (distillation objective × token budget) on the grid every
  setting measured (seed 0, the teachers and students they share), with the slope's 95%
  interval and whether the intervals overlap;
- the distillation-scaling model (Busbridge et al. eq. 8) fitted to the paper-loss runs of two
  budgets: its constants, R², and its error on held-out points (5-fold cross-validation).

Reads runs.csv (200K tokens, 3 seeds: the recorded micro study) and universality.csv (the
runs of this check, `capgap export --study micro_universality`), beside this file.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from capgap.law.distillation import fit_distillation
from capgap.law.fit import fit, points_from_rows
from capgap.law.points import Points
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import format_size

HERE = Path(__file__).parent


def rows(path: Path) -> list[dict]:
    out = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            r["config"], r["extra"] = json.loads(r["config"]), json.loads(r["extra"])
            out.append(r)
    return out


def setting(r: dict) -> str:
    d = r["config"]["distill"]
    loss = d["loss"]
    name = "paper: 0.5·CE + 0.5·soft-CE" if loss["name"] == "soft_ce" and loss["alpha"] == 0.5 else \
        f"{loss['name']}, α={loss['alpha']}"
    return f"{name}, {format_size(d['tokens'])} tokens"


def law_table(all_rows: list[dict], n_boot: int) -> str:
    by = {}
    for r in all_rows:
        by.setdefault(setting(r), []).append(r)
    # the grid every setting measured, seed 0 only (the new settings ran one seed)
    cells = [{(r["teacher"], round(float(r["student_params"]), -4)) for r in rs if r["seed"] == "0"}
             for rs in by.values()]
    shared = set.intersection(*cells)
    lines = ["| setting | runs | best measured teacher (250K / 600K) | T\\* = a·S + b | a, 95% CI "
             "| T\\*(250K) | T\\*(600K) | curve model, χ²/dof |", "|---|---:|---|---|---|---|---|---|"]
    intervals, losses = {}, {}
    for name, rs in sorted(by.items()):
        use = [r for r in rs if r["seed"] == "0"
               and (r["teacher"], round(float(r["student_params"]), -4)) in shared]
        losses[name] = {(r["teacher"], round(float(r["student_params"]), -4)): float(r["metric"]) for r in use}
        try:
            result = fit(points_from_rows(use, name), n_boot=n_boot)
        except CapgapError as e:
            lines.append(f"| {name} | {len(use)} | no law: {e} | | | | | |")
            continue
        lo, hi = result.interval(result.samples[:, 0])
        intervals[name] = (lo, hi)
        best = " / ".join(format_size(s.best) for s in result.sizes)
        opt = [f"{format_size(s.optimum)} [{format_size(s.ci[0])}, {format_size(s.ci[1])}]"
               for s in result.sizes]
        chi2 = "" if np.isnan(result.chi2) else f", {result.chi2:.1f}"
        lines.append(f"| {name} | {len(use)} | {best} | {result.a:.2f}·S {'-' if result.b < 0 else '+'} "
                     f"{abs(result.b) / 1e6:.2f}M | [{lo:.2f}, {hi:.2f}] | {opt[0]} | {opt[-1]} "
                     f"| {result.shape}{chi2} |")
    lines.append("")
    for (n1, (l1, h1)), (n2, (l2, h2)) in itertools.combinations(sorted(intervals.items()), 2):
        lines.append(f"- {n1} vs {n2}: slope intervals {'overlap' if l1 <= h2 and l2 <= h1 else 'do not overlap'}")
    size = {r["teacher"]: float(r["teacher_params"]) for r in all_rows}
    grid = sorted(shared, key=lambda c: (c[1], size[c[0]]))
    lines += ["", "Held-out loss per point (seed 0; **bold**: the student's best measured teacher):", "",
              "| setting | " + " | ".join(f"{t} → {format_size(s)}" for t, s in grid) + " |",
              "|---|" + "---:|" * len(grid)]
    for name, cell in losses.items():
        best = {}
        for (t, s), v in cell.items():
            if s not in best or v < cell[(best[s], s)]:
                best[s] = t
        lines.append(f"| {name} | " + " | ".join(
            (f"**{cell[c]:.3f}**" if best[c[1]] == c[0] else f"{cell[c]:.3f}") for c in grid) + " |")
    return "\n".join(lines)


def scaling_table(all_rows: list[dict], folds: int = 5) -> str:
    paper = [r for r in all_rows if setting(r).startswith("paper")]
    points = points_from_rows(paper, "paper-loss runs")
    budgets = sorted({int(t) for t in points.tokens})
    model = fit_distillation(points)
    k = model.constants
    rng = np.random.default_rng(0)
    # folds stratified by budget: every training set keeps both budgets
    order = np.concatenate([rng.permutation(np.flatnonzero(points.tokens == b)) for b in budgets])
    errors = []
    for f in range(folds):
        test = np.zeros(len(order), bool)
        test[order[f::folds]] = True
        train = Points(*(v[~test] for v in (points.teacher, points.student, points.value, points.seed)),
                       points.metric, points.teacher_loss[~test], points.tokens[~test])
        m = fit_distillation(train)
        pred = m.predict(points.teacher_loss[test], points.student[test], points.tokens[test])
        errors.append(pred - points.value[test])
    err = np.concatenate(errors)
    rel = np.abs(err) / points.value[np.concatenate([order[f::folds] for f in range(folds)])]
    return "\n".join([
        f"{len(points.value)} paper-loss runs at {', '.join(format_size(b) for b in budgets)} tokens:",
        "",
        "| constant | " + " | ".join(k) + " |",
        "|---|" + "---:|" * len(k),
        "| value | " + " | ".join(f"{v:.4g}" for v in k.values()) + " |",
        "",
        f"- in-sample: R² {model.r2:.4f}, RMS residual {model.rms:.4f} nats, largest relative error "
        f"{100 * model.max_rel:.2f}%",
        f"- held out ({folds}-fold cross-validation, each point predicted by a fit without it): "
        f"RMS {np.sqrt(np.mean(err ** 2)):.4f} nats, mean relative error {100 * rel.mean():.2f}%, "
        f"largest {100 * rel.max():.2f}%"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(HERE / "runs.csv"))
    ap.add_argument("--new", default=str(HERE / "universality.csv"))
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--write", help="markdown file whose <!-- universality --> and "
                                    "<!-- distillation-scaling --> blocks are replaced")
    args = ap.parse_args(argv)
    all_rows = rows(Path(args.runs)) + rows(Path(args.new))
    blocks = {"universality": law_table(all_rows, args.bootstrap),
              "distillation-scaling": scaling_table(all_rows)}
    cmd = " ".join(["python docs/micro_law/universality.py", *(argv if argv is not None else sys.argv[1:])])
    stamp = (f"`{cmd}` ({datetime.date.today():%Y-%m-%d}, "
             f"{os.cpu_count()}-core CPU, no GPU):")
    for name, text in blocks.items():
        print(f"== {name}\n{text}\n")
    if args.write:
        path = Path(args.write)
        doc = path.read_text()
        for name, text in blocks.items():
            block = f"<!-- {name} -->\n{stamp}\n\n{text}\n<!-- /{name} -->"
            doc = re.sub(f"<!-- {name} -->.*?<!-- /{name} -->", lambda _: block, doc, flags=re.S)
        path.write_text(doc)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
