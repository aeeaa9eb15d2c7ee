"""Where the configs are: conf/ beside the package in a checkout (an editable install too),
capgap/conf inside an installed wheel (pyproject.toml ships it there)."""

from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]  # capgap/, above runtime/


def conf_dir() -> Path:
    # the wheel's own copy first: beside site-packages/capgap there may be anything
    for candidate in (_PKG / "conf", _PKG.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"capgap's conf/ is neither in {_PKG} nor beside it: reinstall capgap")
