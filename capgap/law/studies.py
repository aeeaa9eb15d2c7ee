"""Which store rows belong to one fit.

A study is one question asked of one grid: its rows may differ in the teacher, the student
size and the seed, and in nothing else. Rows that also differ in tokens, data, loss or
precision would be averaged as if they were replicates, so the fit refuses them unless
they are split into separate curves (`--group-by KEY`).

Imports nothing heavy: the law commands and the config hash both use it.
"""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

from capgap.runtime.errors import CapgapError

DEFAULT = "default"

# Config keys that never change a result (where files go, how progress is shown) or that
# name the row rather than the experiment (`study`). Prefixes, as the config hash uses them.
NOT_HASHED = ("paths", "hydra", "store", "study", "logger", "trainer.enable_progress_bar",
              "trainer.enable_model_summary", "trainer.log_every_n_steps")

# The axes of the law's grid: a study varies these freely. A student is sized by
# student.size, or by prune.sparsity when the size is unset; teacher.* changes with the teacher.
GRID = ("teacher", "student.size", "prune.sparsity", "seed")


def is_off(v) -> bool:
    return v is None or v is False or v == [] or v in ("", "none", "off") or (
        isinstance(v, (int, float)) and v == 0)


def flatten(d: dict, prefix: str = ""):
    """(dotted key, value) pairs. Keys at an "off" value are left out, so adding a new option
    (off by default) keeps the hash of every earlier run, and an old row that lacks an option
    compares equal to a new row that has it switched off."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
        elif not is_off(v):
            yield f"{prefix}{k}", v


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _setting(config: dict) -> dict:
    """The keys that must agree between rows of one curve, with their values."""
    return {k: v for k, v in flatten(config) if not _under(k, NOT_HASHED + GRID)}


def check_name(study) -> str:
    if not isinstance(study, str) or not study.strip() or len(study) > 200:
        raise CapgapError(f"study={study!r} must be a non-empty name of at most 200 characters")
    return study


def pick(held: dict[str, dict], asked: str | None, source: str) -> str:
    """The study to read: the one asked for (it must be there), else the only one held."""
    names = sorted(held)
    if asked is not None:
        if asked not in held:
            have = ", ".join(names) if names else "none"
            raise CapgapError(f"study {asked!r} is not in {source} (it holds: {have})")
        return asked
    if len(names) > 1:
        listed = ", ".join(f"{n} ({held[n].get('done', 0)} done)" for n in names)
        raise CapgapError(f"{source} holds studies {listed}: pick one with --study NAME")
    return names[0] if names else DEFAULT


def _show(values: list[str]) -> str:
    shown = sorted(values)
    return ", ".join(shown[:4]) + (f" … {len(shown)} values" if len(shown) > 4 else "")


def differences(rows: list[dict]) -> dict[str, list[str]]:
    """Setting keys whose values differ between rows, each with its values as shown to the
    user. Rows without a stored config (CSV imports) cannot be compared and are not."""
    settings = [_setting(r["config"]) for r in rows if isinstance(r.get("config"), dict)]
    keys = set().union(*settings) if settings else set()
    diff = {}
    for k in sorted(keys):
        # repr: lists are values too; a key a row lacks (or has off) shows as unset
        values = {"unset" if s.get(k) is None else repr(s.get(k)) for s in settings}
        if len(values) > 1:
            diff[k] = sorted(values)
    return diff


def groups(rows: list[dict], group_by: list[str] | None, source: str) -> dict[str | None, list[dict]]:
    """Rows split into curves by the --group-by keys ({None: rows} without them); each curve
    must be poolable, or one line names the keys that differ and their values."""
    group_by = list(group_by or [])
    configs = [r.get("config") if isinstance(r.get("config"), dict) else {} for r in rows]
    for key in group_by:
        if not any(_has(c, key) for c in configs):
            raise CapgapError(f"--group-by {key}: no row of {source} has that config key")
    split: dict[str | None, list[dict]] = {}
    for row, config in zip(rows, configs):
        flat = dict(flatten(config))
        label = " ".join(f"{k}={flat.get(k)}" for k in group_by) or None
        split.setdefault(label, []).append(row)
    for label, members in split.items():
        diff = {k: v for k, v in differences(members).items() if k not in group_by}
        if diff:
            where = f"{source}{f' ({label})' if label else ''}"
            named = "; ".join(f"{k}: {_show(v)}" for k, v in diff.items())
            first = next(iter(diff))
            raise CapgapError(f"{where} pools runs whose configs differ in more than teacher, "
                              f"student size and seed: {named}; split them with --group-by "
                              f"{first} (or give each its own study=)")
    return split


def _has(config: dict, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_hash(cfg) -> str:
    """Same experiment, same hash: what identifies a run for resume and for the store."""
    items = flatten(OmegaConf.to_container(cfg, resolve=False))
    kept = sorted((k, repr(v)) for k, v in items if not k.startswith(NOT_HASHED))
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:16]
