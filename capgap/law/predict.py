"""Which teacher to distil a student of size S from: the law's T*, then the nearest zoo model."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from capgap.confdir import conf_dir as installed_conf
from capgap.errors import CapgapError
from capgap.law.fit import PAPER, Fit
from capgap.law.sizes import format_size, parse_size

__all__ = ["parse_size", "load_zoo", "pick_teacher", "predict", "describe"]


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
        t, lo, hi = PAPER["a"] * s + PAPER["b"], math.nan, math.nan
        source = f"the paper's fit (T* = {PAPER['a']}·S − {-PAPER['b'] / 1e6}M): no results of your own yet"
    else:
        t, lo, hi = fit.predict(s)
        source = f"your fit over {len(fit.sizes)} student sizes (T* = {fit.a:.3f}·S {'+-'[fit.b < 0]} {abs(fit.b) / 1e6:.3f}M)"
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
