"""Which teacher to distil a student of size S from: the law's T*, then the nearest zoo model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from capgap.law.fit import PAPER, PAPER_RATIO, Fit, paper_optimum
from capgap.runtime.confdir import conf_dir as installed_conf
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import format_size, parse_size

__all__ = ["parse_size", "load_zoo", "pick_teacher", "predict", "describe", "predict_distillation",
           "describe_distillation"]


def load_zoo(conf_dir: str | Path | None = None, family: str | None = None) -> list[dict]:
    """[{name, params, family}] from conf/teacher/*.yaml; files without a params count are
    not teachers one can pick by size, so they are left out."""
    conf_dir = Path(conf_dir) if conf_dir else installed_conf() / "teacher"
    zoo = []
    for path in sorted(conf_dir.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        try:
            params = parse_size(spec["params"])
        except (KeyError, CapgapError):
            continue
        zoo.append({"name": spec.get("name", path.stem), "params": params,
                    "family": spec.get("family")})
    if family:
        zoo = [t for t in zoo if t["family"] == family]
    return zoo


def pick_teacher(target: float, student: float, zoo: list[dict]) -> dict | None:
    """The zoo model nearest T* on a log scale (the capacity-gap curve is ~symmetric in
    log T), among those bigger than the student; None if none is bigger."""
    bigger = [t for t in zoo if t["params"] > student]
    if not bigger:
        return None
    target = max(target, student)  # a law below S still means: the smallest teacher above S
    return min(bigger, key=lambda t: abs(math.log(t["params"] / target)))


def predict(student, fit: Fit | None = None, zoo: list[dict] | None = None) -> dict:
    """T* and its interval for a student size; the paper's line when there is no fit."""
    s = parse_size(student)
    notes = []
    if fit is None:
        # the line's intercept (−11.5M) would put T* below a small student: its ratio there
        t, lo, hi = paper_optimum(s), math.nan, math.nan
        line = f"T* = {PAPER['a']}·S − {-PAPER['b'] / 1e6}M"
        if t != PAPER["a"] * s + PAPER["b"]:
            line += f"; {PAPER_RATIO}·S at this size, where its intercept dominates"
        source = f"the paper's fit ({line}): no results of your own yet"
    else:
        t, lo, hi = fit.predict(s)
        source = f"your fit over {len(fit.sizes)} student sizes (T* = {fit.a:.3f}·S {'-' if fit.b < 0 else '+'} {abs(fit.b) / 1e6:.3f}M)"
        fitted = (min(z.student for z in fit.sizes), max(z.student for z in fit.sizes))
    if fit is not None and not fitted[0] * 0.5 <= s <= fitted[1] * 2:
        notes.append(f"{format_size(s)} is outside the fitted student range "
                     f"{format_size(fitted[0])}–{format_size(fitted[1])}: extrapolating")
    if t <= s:
        notes.append("the law gives no teacher bigger than this student here")
    teacher = pick_teacher(t, s, zoo) if zoo is not None else None
    if zoo is not None and teacher is None:
        notes.append("no teacher in the zoo is bigger than this student")
    return {"student_params": s, "optimal_teacher": t, "ci95": [lo, hi], "source": source,
            "teacher": teacher, "notes": notes}


def describe(p: dict) -> str:
    lo, hi = p["ci95"]
    interval = "" if math.isnan(lo) else f" (95% CI {format_size(lo)}–{format_size(hi)})"
    lines = [f"student {format_size(p['student_params'])}: optimal teacher ≈ "
             f"{format_size(p['optimal_teacher'])}{interval}, k = "
             f"{p['optimal_teacher'] / p['student_params']:.2f}",
             f"from {p['source']}"]
    if p["teacher"]:
        t = p["teacher"]
        lines.append(f"pick teacher={t['name']} ({format_size(t['params'])})")
    return "\n".join(lines + [f"note: {n}" for n in p["notes"]])


def predict_distillation(student, tokens: int, points) -> dict:
    """The distillation-scaling model's student loss at (student, tokens) for every teacher
    measured (by its held-out loss), and the teacher loss that would be best."""
    from capgap.law.distillation import fit_distillation

    s = parse_size(student)
    model = fit_distillation(points)
    known = np.isfinite(points.teacher_loss)
    teachers = {}
    for t, lt in zip(points.teacher[known], points.teacher_loss[known]):
        teachers.setdefault(float(t), []).append(float(lt))
    rows = sorted(((t, float(np.mean(v))) for t, v in teachers.items() if t > s), key=lambda r: r[1])
    pred = [(t, lt, float(model.predict(lt, s, tokens))) for t, lt in rows]
    losses = points.teacher_loss[known]
    best_lt = model.best_teacher_loss(s, tokens, (0.5 * losses.min(), 2 * losses.max()))
    return {"student_params": s, "tokens": tokens, "model": model, "teachers": pred,
            "best_teacher_loss": best_lt, "best_loss": float(model.predict(best_lt, s, tokens))}


def describe_distillation(p: dict) -> str:
    lines = [f"student {format_size(p['student_params'])} distilled on {format_size(p['tokens'])} tokens "
             f"(distillation-scaling, R² {p['model'].r2:.4f} over {p['model'].n_points} runs):"]
    if p["teachers"]:
        best = min(p["teachers"], key=lambda r: r[2])
        lines += [f"  teacher {format_size(t)} (held-out loss {lt:.4g}) -> student loss {ls:.4g}"
                  + ("  <- best" if (t, lt, ls) == best else "") for t, lt, ls in p["teachers"]]
    else:
        lines.append("  no measured teacher is bigger than this student")
    lines.append(f"best teacher loss by the model: {p['best_teacher_loss']:.4g} "
                 f"(student loss {p['best_loss']:.4g})")
    return "\n".join(lines)
