"""The teachers capgap loads (zoo, micro), how they are counted (params) and addressed (adapters)."""

from pathlib import Path


def teacher_name(teacher) -> str:
    """The teacher as messages, metrics, store rows and run folders name it: teacher.path's
    folder when a path replaced the model (teacher.name is then the preset it overrode),
    else teacher.name. Imports nothing heavy: run.py's folder resolver uses it."""
    path = teacher.get("path")
    return Path(str(path)).name if path else teacher["name"]
