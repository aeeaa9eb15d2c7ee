"""One study of a store, as the fit reads it: its done rows, split into curves that may be
pooled (capgap.law.studies), as points; and the law fitted to them.

`capgap fit|predict`, the fit at the end of a multirun, the adaptive sweep's starting law and
a chain's assistant sizes all read a study this way, so none of them can pool another study's
rows or runs that differ in more than the grid. Its own module: studies.py is imported by the
store and the config hash, and must stay free of the fit and its numpy/scipy.
"""

from __future__ import annotations

from capgap.law.fit import Fit, fit
from capgap.law.points import Points, points_from_rows
from capgap.law.studies import groups


def study_curves(store, study: str, group_by: list[str] | None = None, metric: str | None = None,
                 required: bool = True) -> dict[str | None, Points]:
    """{curve label (None: the only one): Points} of `study`'s done rows in `store`, split by
    the group_by keys. A study without rows is an error, or {} when not `required`."""
    rows = store.results(study=study)
    if not rows and not required:
        return {}
    source = f"study {study} in store {store.name}"
    # groups() of no rows is {}: points_from_rows then says there is nothing to fit
    split = groups(rows, group_by, source) or {None: rows}
    return {label: points_from_rows(r, f"{source}{f' ({label})' if label else ''}", metric)
            for label, r in split.items()}


def study_law(store, study: str, n_boot: int = 1000) -> Fit:
    """T* = a·S + b over one study of `store`, as one curve: rows whose configs differ in more
    than teacher, student size and seed are refused with the keys that differ."""
    (points,) = study_curves(store, study).values()
    return fit(points, n_boot=n_boot)
