"""Hydra's callbacks (conf/config.yaml hydra.callbacks). Hydra instantiates them before the
first job of every run and multirun, so this module imports nothing heavy at import time:
importing Lightning here (capgap.tasks.store_callback has the Lightning ones) cost each `run.py -m`
about 17 s before anything started."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback


class FitLawOnMultirunEnd(Callback):
    """After a sweep, fit T* = a*S + b over the rows of the sweep's own study and draw the
    plots in the sweep dir. A sweep that cannot be fitted yet (one teacher, one student size,
    configs that cannot be pooled) says why in one line."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from capgap.law import store as law_store
        from capgap.law.plots import save_plots
        from capgap.law.studies import DEFAULT
        from capgap.law.study_fit import study_law
        from capgap.runtime import distributed
        from capgap.runtime.errors import CapgapError

        if not distributed.is_rank_zero():  # each node runs the sweep: node 0 fits
            return
        study = config.get("study") or DEFAULT
        out = Path(config.hydra.sweep.dir)
        try:
            # no --group-by here: one curve, or the line that names what differs
            result = study_law(law_store.from_config(config.store), study)
        except CapgapError as e:
            print(f"[capgap] no law fitted: {e}")
            return
        print(result.table())
        for path in [result.to_json(out / "fit.json"), *save_plots(result, out)]:
            print(f"[capgap] wrote {path}")
