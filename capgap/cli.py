"""`capgap`: fit the law from a store or CSV, predict a teacher, report, export, bench.

Imports nothing from torch on the law commands, so they answer in well under a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from capgap.errors import CapgapError


def _add_source(p: argparse.ArgumentParser, csv: bool = True):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--store", metavar="URL",
                     help="SQLAlchemy URL or SQLite path (default: $CAPGAP_STORE or the capgap cache)")
    if csv:
        src.add_argument("--csv", metavar="FILE",
                         help="results CSV: teacher_params, student_params, metric[, seed]")
        p.add_argument("--metric", help="which stored metric to fit when the store holds several")
        p.add_argument("--higher-is-better", action="store_true",
                       help="the metric is a score (accuracy), not a loss")


def _store(url: str | None, required: bool = True):
    """The store, or None when its SQLite file does not exist and that is allowed."""
    from capgap.law.store import Store, default_url, sqlite_path

    url = url or default_url()
    path = sqlite_path(url)
    if path and not path.exists():
        if required:
            raise CapgapError(f"no store at {path} (run a study first, or pass --store / --csv)")
        return None
    return Store(url)


def _points(args, required: bool = True):
    from capgap.law.fit import points_from_rows, read_csv

    if args.csv:
        return read_csv(args.csv)
    store = _store(args.store, required)
    if store is None:
        return None
    rows = store.results()
    if not rows and not required:
        return None
    return points_from_rows(rows, f"store {store.name}", args.metric)


def cmd_fit(args):
    from capgap.law.fit import fit
    from capgap.law.plots import save_plots

    result = fit(_points(args), higher_is_better=args.higher_is_better, n_boot=args.bootstrap)
    print(result.table())
    out = Path(args.out)
    for path in [result.to_json(out / "fit.json"), *save_plots(result, out)]:
        print(f"wrote {path}")


def cmd_predict(args):
    from capgap.law.fit import fit
    from capgap.law.predict import describe, load_zoo, predict

    points = _points(args, required=False)
    result = fit(points, higher_is_better=args.higher_is_better) if points else None
    print(describe(predict(args.student, result, load_zoo(family=args.family))))


def cmd_report(args):
    store = _store(args.store)
    rows = store.results(status=None)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "skipped")}
    print(f"store {store.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if not rows:
        return
    print(f"{'id':>5} {'status':<7} {'teacher':<16} {'T':>7} {'S':>7} {'sparsity':>8} "
          f"{'metric':<12} {'value':>8} {'ppl':>8} {'seed':>4} {'wall s':>7}  note")
    for r in rows:
        note = (r["error"] or "").splitlines()[0][:60] if r["error"] else r["config_hash"][:12]
        print(f"{r['id']:>5} {r['status']:<7} {_cell(r['teacher'])[:16]:<16}"
              f" {_cell(r['teacher_params'], 'size'):>7} {_cell(r['student_params'], 'size'):>7}"
              f" {_cell(r['sparsity'], '.3f'):>8} {_cell(r['metric_name'])[:12]:<12}"
              f" {_cell(r['metric'], '.4g'):>8} {_cell(r['perplexity'], '.4g'):>8}"
              f" {_cell(r['seed']):>4} {_cell(r['wall_time_s'], '.0f'):>7}  {note}")


def _cell(value, fmt: str = "") -> str:
    from capgap.law.sizes import format_size

    if value is None:
        return "-"
    return format_size(value) if fmt == "size" else format(value, fmt)


def cmd_export(args):
    store = _store(args.store)
    path = store.export_csv(args.csv, status=None if args.all else "done")
    print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="capgap", description="The Law of Capacity Gap, as a tool.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit T* = a·S + b from a store or CSV; table, JSON, PNGs")
    _add_source(p)
    p.add_argument("--out", default="capgap_fit", help="folder for fit.json and the plots")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="the optimal teacher for a student size, and which to pick")
    p.add_argument("--student", required=True, help="student size: 30M, 1.2B, 3B, 135000000")
    p.add_argument("--family", help="pick only from this teacher family (pythia, gpt2, micro …)")
    _add_source(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="every run in the store")
    _add_source(p, csv=False)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="write the store's results to a CSV")
    _add_source(p, csv=False)
    p.add_argument("--csv", required=True, metavar="OUT")
    p.add_argument("--all", action="store_true", help="failed and skipped runs too")
    p.set_defaults(func=cmd_export)

    # listed for --help; the arguments belong to capgap.bench and capgap.plan
    sub.add_parser("bench", help="benchmarks (capgap bench --help)", add_help=False)
    sub.add_parser("plan", help="a study's points, FLOPs and GPU-hours before it runs (capgap plan --help)",
                   add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:
            try:
                from capgap import bench  # imports torch: only when asked for
            except ImportError as e:
                raise CapgapError(f"capgap bench is unavailable here: {e}") from None
            return bench.main(argv[1:]) or 0
        if argv[:1] == ["plan"]:
            from capgap import plan  # composes with Hydra: only when asked for

            return plan.main(argv[1:]) or 0
        args = parser().parse_args(argv)
        args.func(args)
        return 0
    except CapgapError as e:
        print(f"capgap: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # `capgap report | head` closed the pipe: silence Python's flush at exit, as the docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
