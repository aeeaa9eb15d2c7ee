"""What names a teacher's weights, for the caches built from them (pruning scores, generated
transfer sets, assistant chains): a change of teacher never meets an old entry."""

from __future__ import annotations

from pathlib import Path

from capgap.models import micro


def teacher_id(t, pretrain_cfg, cache_dir, tokenizer) -> str:
    """Names the weights of teacher `t` (a teacher node), so cached scores never outlive a
    change of teacher; a micro teacher by its cache entry, which `pretrain_cfg` helps name."""
    if t.get("path"):
        cfg_file = Path(t.path) / "config.json"
        return f"path:{Path(t.path).resolve()}:{cfg_file.stat().st_mtime_ns}"
    if t.source == "micro":
        return f"micro:{micro.cache_folder(t, pretrain_cfg, cache_dir, tokenizer).name}"
    return f"{t.source}:{t.get('hub_id')}@{t.get('revision')}"
