"""`capgap`: fit the law from a store or CSV, predict a teacher, report, export, bench.

Imports nothing from torch on the law commands, so they answer in well under a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from capgap.runtime.errors import CapgapError


def _add_source(p: argparse.ArgumentParser, csv: bool = True):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--store", metavar="URL",
                     help="SQLAlchemy URL or SQLite path (default: $CAPGAP_STORE or the capgap cache)")
    if csv:
        src.add_argument("--csv", metavar="FILE",
                         help="results CSV: teacher_params, student_params, metric[, seed]")
        p.add_argument("--metric", help="which stored metric to fit: a row's metric (val_loss) or a "
                                        "benchmark figure of eval=harness, e.g. harness/hellaswag/acc_norm")
        p.add_argument("--higher-is-better", action="store_true",
                       help="the metric is a score (accuracy), not a loss (benchmark figures from the "
                            "store carry their direction: no flag needed)")
    p.add_argument("--study", metavar="NAME",
                   help="the study to read (default: the store's only one; `capgap report` lists them)")


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


def _study(store, asked: str | None) -> str:
    from capgap.law.studies import pick

    return pick(store.studies(), asked, f"store {store.name}")


def _curves(args, required: bool = True) -> dict:
    """{curve label (None: the only one): Points} of one study, split by --group-by; a CSV
    is one curve. {} when there is no store and that is allowed."""
    from capgap.law.fit import read_csv
    from capgap.law.study_fit import study_curves

    if args.csv:
        if args.study:
            raise CapgapError("--study reads a store; a CSV holds one study already")
        return {None: read_csv(args.csv)}
    store = _store(args.store, required)
    if store is None:
        return {}
    return study_curves(store, _study(store, args.study), getattr(args, "group_by", None), args.metric,
                        required)


MODELS = ("capacity-gap", "distillation-scaling")


def _one_curve(curves: dict, what: str):
    """The distillation-scaling law fits one set of runs: its own axes include the tokens,
    so --group-by (which splits into curves) has no meaning for it."""
    if len(curves) != 1:
        raise CapgapError(f"{what} fits one set of runs; drop --group-by")
    return next(iter(curves.values()))


def _model(args) -> str:
    """argparse's `choices` would print usage and a second line; one line is the rule here."""
    model = args.model or ("distillation-scaling" if getattr(args, "tokens", None) else "capacity-gap")
    if model not in MODELS:
        raise CapgapError(f"--model {model} is not a law model capgap knows: choose one of "
                          f"{', '.join(MODELS)}")
    return model


def cmd_fit(args):
    from capgap.law.fit import fit
    from capgap.law.plots import save_plots

    model, curves = _model(args), _curves(args)
    if model == "distillation-scaling":
        from capgap.law.distillation import fit_distillation
        from capgap.runtime.atomic import write_json_atomic

        if args.holdout is not None:
            raise CapgapError("--holdout checks the capacity-gap law; drop --model distillation-scaling")
        points = _one_curve(curves, "--model distillation-scaling")
        dist = fit_distillation(points)  # refuses first, so nothing is written on bad input
        print(dist.table())
        print(_linear_beside(points, args))
        out = write_json_atomic(Path(args.out) / "distillation.json", dist.to_dict())
        print(f"wrote {out}")
        return
    if args.holdout is not None:
        return _holdout(curves, args)
    # fit every curve before writing anything, so a curve that cannot be fitted leaves no files
    results = {label: fit(points, higher_is_better=_higher(args, points), n_boot=args.bootstrap)
               for label, points in curves.items()}
    for result, out in _per_curve(results, args):
        print(result.table())
        for path in [result.to_json(out / "fit.json"), *save_plots(result, out)]:
            print(f"wrote {path}")


def _per_curve(results: dict, args):
    """(result, its output folder) per curve; a `== label` header where curves are split."""
    for label, result in results.items():
        out = Path(args.out)
        if label:
            print(f"== {label}")
            out = out / label.replace(" ", "_").replace("/", "_")
        yield result, out


HOLDOUTS = ("largest",)


def _holdout(curves: dict, args):
    """--holdout largest: per curve, the law fitted without the largest student, its
    prediction for that student beside the teacher that measured best; holdout.json."""
    from capgap.law.holdout import holdout_largest
    from capgap.runtime.atomic import write_json_atomic

    if args.holdout not in HOLDOUTS:
        raise CapgapError(f"--holdout {args.holdout}: choose one of {', '.join(HOLDOUTS)}")
    checks = {label: holdout_largest(points, args.higher_is_better, args.bootstrap)
              for label, points in curves.items()}
    for check, out in _per_curve(checks, args):
        print(check.table())
        print(f"wrote {write_json_atomic(out / 'holdout.json', check.to_dict())}")


def _higher(args, points) -> bool:
    """--higher-is-better, else what the rows recorded (a benchmark's direction), else lower."""
    return bool(args.higher_is_better or points.higher_is_better)


def _linear_beside(points, args) -> str:
    """The capacity-gap law's line for comparison, on the runs of the most measured token
    budget (the law holds the budget fixed; mixing budgets would read as seed noise)."""
    import numpy as np

    from capgap.law.fit import fit
    from capgap.runtime.sizes import format_size

    budgets, counts = np.unique(points.tokens[np.isfinite(points.tokens)], return_counts=True)
    budget = max(zip(counts, budgets))[1]  # the most runs; of equals, the largest budget
    keep = points.tokens == budget
    sub = type(points)(points.teacher[keep], points.student[keep], points.value[keep],
                       points.seed[keep], points.metric)
    try:
        law = fit(sub, higher_is_better=_higher(args, points), n_boot=args.bootstrap)
    except CapgapError as e:
        return f"capacity-gap law at {format_size(budget)} tokens: not fitted ({e})"
    return (f"capacity-gap law (joint) at {format_size(budget)} tokens, {keep.sum()} runs: "
            f"{law.line()}")


def cmd_predict(args):
    from capgap.law.fit import fit
    from capgap.law.predict import describe, describe_distillation, load_zoo, predict, predict_distillation
    from capgap.runtime.sizes import parse_size

    try:  # before any store is read: the flag, named
        parse_size(args.student)
    except CapgapError as e:
        raise CapgapError(f"--student {args.student}: {e}") from None
    model = _model(args)
    curves = _curves(args, required=model == "distillation-scaling")
    if model == "distillation-scaling":
        if not args.tokens:
            raise CapgapError("--model distillation-scaling predicts a loss at a token budget: give --tokens")
        points = _one_curve(curves, "--model distillation-scaling")
        print(describe_distillation(predict_distillation(args.student, parse_size(args.tokens), points)))
        return
    points = curves.get(None)
    result = fit(points, higher_is_better=_higher(args, points)) if points else None
    print(describe(predict(args.student, result, load_zoo(family=args.family))))


def cmd_report(args):
    from capgap.law.store import STATUSES
    from capgap.law.studies import pick

    store = _store(args.store)
    held = store.studies()
    if args.study is not None:
        pick(held, args.study, f"store {store.name}")  # an unknown study is an error, not an empty report
    shown = [held[args.study]] if args.study is not None else list(held.values())
    counts = {s: sum(c[s] for c in shown) for s in STATUSES}
    rows = store.results(status=None, study=args.study)
    print(f"store {store.name}{f' study {args.study}' if args.study else ''}: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()))
    print(f"studies ({len(held)}): " + ("; ".join(
        f"{name}: " + ", ".join(f"{n} {s}" for s, n in c.items()) for name, c in held.items())
        or "none"))
    if not rows:
        return
    print(f"{'id':>5} {'study':<12} {'status':<7} {'teacher':<16} {'T':>7} {'S':>7} {'sparsity':>8} "
          f"{'metric':<12} {'value':>8} {'ppl':>8} {'seed':>4} {'wall s':>7}  note")
    for r in rows:
        note = (r["error"] or "").splitlines()[0][:60] if r["error"] else r["config_hash"][:12]
        print(f"{r['id']:>5} {r['study'][:12]:<12} {r['status']:<7} {_cell(r['teacher'])[:16]:<16}"
              f" {_cell(r['teacher_params'], 'size'):>7} {_cell(r['student_params'], 'size'):>7}"
              f" {_cell(r['sparsity'], '.3f'):>8} {_cell(r['metric_name'])[:12]:<12}"
              f" {_cell(r['metric'], '.4g'):>8} {_cell(r['perplexity'], '.4g'):>8}"
              f" {_cell(r['seed']):>4} {_cell(r['wall_time_s'], '.0f'):>7}  {note}")


def _cell(value, fmt: str = "") -> str:
    from capgap.runtime.sizes import format_size

    if value is None:
        return "-"
    return format_size(value) if fmt == "size" else format(value, fmt)


def cmd_export(args):
    store = _store(args.store)
    study = None if args.study is None else _study(store, args.study)  # None: every study
    path = store.export_csv(args.csv, status=None if args.all else "done", study=study)
    print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="capgap", description="The Law of Capacity Gap, as a tool.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit T* = a·S + b from a store or CSV; table, JSON, PNGs")
    _add_source(p)
    p.add_argument("--out", default="capgap_fit", help="folder for fit.json and the plots")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--model", help="capacity-gap (T* = a·S + b, the default) or distillation-scaling "
                                   "(Busbridge et al. 2025: student loss from teacher loss, size, tokens)")
    p.add_argument("--group-by", action="append", metavar="KEY",
                   help="config key (e.g. distill.tokens) whose values get separate fits, in "
                        "OUT/KEY=VALUE/; repeat for several keys")
    p.add_argument("--holdout", metavar="largest",
                   help="largest: fit on every student size but the largest and set the law's T* "
                        "for it (with its 95%% interval) beside its measured best teacher")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="the optimal teacher for a student size, and which to pick")
    p.add_argument("--student", required=True, help="student size: 30M, 1.2B, 3B, 135000000")
    p.add_argument("--family", help="pick only from this teacher family (pythia, gpt2, micro …)")
    p.add_argument("--tokens", help="distillation tokens (e.g. 2B): predict the student's loss with "
                                    "the distillation-scaling model for each measured teacher")
    p.add_argument("--model", help="capacity-gap (default) or distillation-scaling (default with --tokens)")
    _add_source(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="the studies a store holds, and every run in it (or in --study)")
    _add_source(p, csv=False)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="write the store's results (every study, or --study) to a CSV")
    _add_source(p, csv=False)
    p.add_argument("--csv", required=True, metavar="OUT")
    p.add_argument("--all", action="store_true", help="failed and skipped runs too")
    p.set_defaults(func=cmd_export)

    # listed for --help; the arguments belong to capgap.commands.bench and capgap.commands.plan
    sub.add_parser("bench", help="benchmarks (capgap bench --help)", add_help=False)
    sub.add_parser("plan", help="a study's points, FLOPs and GPU-hours before it runs (capgap plan --help)",
                   add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:
            try:
                from capgap.commands import bench  # imports torch: only when asked for
            except ImportError as e:
                raise CapgapError(f"capgap bench is unavailable here: {e}") from None
            return bench.main(argv[1:]) or 0
        if argv[:1] == ["plan"]:
            from capgap.commands import plan  # composes with Hydra: only when asked for

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
