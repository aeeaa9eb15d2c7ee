"""Where the configs are: conf/ beside the package in a checkout (an editable install too),
capgap/conf inside an installed wheel (pyproject.toml ships it there)."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    # the wheel's own copy first: beside site-packages/capgap there may be anything
    for candidate in (_HERE / "conf", _HERE.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"capgap's conf/ is neither in {_HERE} nor beside it: reinstall capgap")
