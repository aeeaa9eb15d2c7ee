"""Calibration of the capacity-gap estimators on planted laws whose curves are not parabolas
(law_data.misspecified_law): slope error, 95% interval coverage, interval width.

    python tests/calibrate_law.py --draws 200 --write docs/calibration.md

writes the table with the command, the date and the machine; tests/test_law_calibration.py
runs the same code on fewer draws and holds the chosen estimator to the acceptance bar.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from law_data import misspecified_law  # noqa: E402

from capgap.law.fit import fit, points_from_rows  # noqa: E402
from capgap.law.joint import ROBUST, TODAY, Estimator  # noqa: E402

# every candidate tried, the chosen one (ROBUST) last
CANDIDATES = {
    "today: parabola, seed weights, seed bootstrap": TODAY,
    "parabola, noise-model weights, student bootstrap": Estimator("parabola"),
    "skew+cubic, seed weights, student bootstrap": Estimator("skew+cubic", "seeds"),
    "skew+cubic, noise-model weights, student bootstrap": Estimator("skew+cubic"),
    "auto (AICc), noise-model weights, wild bootstrap": Estimator(bootstrap="wild"),
    "auto (AICc), noise-model weights, student bootstrap (chosen)": ROBUST,
}
SEED = 2026


def study(draws: int, seed: int = SEED):
    rng = np.random.default_rng(seed)
    return [misspecified_law(rng) for _ in range(draws)]


def calibrate(estimator: Estimator, data, n_boot: int) -> dict:
    """Per draw: relative slope error, whether the 95% interval covers the planted slope,
    the interval's width relative to the slope, and whether the curves were symmetric."""
    out = {k: [] for k in ("err", "covered", "width", "symmetric")}
    for i, (a, _b, rows, info) in enumerate(data):
        result = fit(points_from_rows(rows, f"draw {i}"), n_boot=n_boot, seed=i, estimator=estimator)
        lo, hi = result.interval(result.samples[:, 0])
        out["err"].append(result.a / a - 1)
        out["covered"].append(lo <= a <= hi)
        out["width"].append((hi - lo) / a)
        out["symmetric"].append(info["symmetric"])
    return {k: np.array(v) for k, v in out.items()}


def figures(r: dict) -> dict:
    sym = r["symmetric"]
    return {"rms": 100 * float(np.sqrt(np.mean(r["err"] ** 2))),
            "max": 100 * float(np.abs(r["err"]).max()),
            "cover": 100 * float(r["covered"].mean()),
            "sym_rms": 100 * float(np.sqrt(np.mean(r["err"][sym] ** 2))) if sym.any() else np.nan,
            "width": 100 * float(np.median(r["width"])),
            "n": len(sym), "n_sym": int(sym.sum())}


def table(results: dict[str, dict]) -> str:
    lines = ["| estimator | slope error RMS | max | 95% interval covers | symmetric subset RMS "
             "| median interval width |", "|---|---:|---:|---:|---:|---:|"]
    for name, f in results.items():
        lines.append(f"| {name} | {f['rms']:.2f}% | {f['max']:.1f}% | {f['cover']:.0f}% "
                     f"| {f['sym_rms']:.2f}% ({f['n_sym']} draws) | {f['width']:.1f}% |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--only", help="comma-separated indices into CANDIDATES (default: all)")
    ap.add_argument("--write", help="markdown file whose table between the <!-- calibration:BLOCK "
                                    "--> markers is replaced (appended when missing)")
    ap.add_argument("--block", default="main", help="which table of --write (default: main)")
    args = ap.parse_args(argv)
    data = study(args.draws)
    names = list(CANDIDATES)
    if args.only:
        names = [names[int(i)] for i in args.only.split(",")]
    results = {}
    for name in names:
        t0 = time.perf_counter()
        results[name] = figures(calibrate(CANDIDATES[name], data, args.bootstrap))
        print(f"{name}: {results[name]}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    text = table(results)
    print(text)
    if args.write:
        cmd = "python tests/calibrate_law.py " + " ".join(argv if argv is not None else sys.argv[1:])
        mark = f"calibration:{args.block}"
        block = (f"<!-- {mark} -->\n`{cmd}` ({args.draws} planted laws, {args.bootstrap} "
                 f"bootstrap resamples each; {datetime.date.today():%Y-%m-%d}, "
                 f"{os.cpu_count()}-core CPU, no GPU):\n\n{text}\n<!-- /{mark} -->")
        path = Path(args.write)
        old = path.read_text() if path.exists() else ""
        new = re.sub(f"<!-- {mark} -->.*?<!-- /{mark} -->", lambda _: block, old, flags=re.S)
        path.write_text(new if new != old or block in old else old + "\n" + block + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
