"""The wheel works away from the checkout: built from a copy of the sources, installed into a
fresh venv, run from another folder, `capgap predict` finds the teacher zoo it ships and
`capgap fit --csv` fits. Dependencies come from this interpreter's site-packages through a
.pth file (no download); capgap itself only from the wheel."""

import csv
import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

from law_data import law_rows

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_in_the_wheel_list():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for top in ("capgap", "hydra_plugins") for p in (ROOT / top).rglob("*.py")}
    assert on_disk | {"capgap.conf"} == listed


def test_installed_wheel_predicts_and_fits_from_another_folder(tmp_path):
    src = tmp_path / "src"  # the build writes build/ and *.egg-info: into a copy, not the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("capgap", "conf", "hydra_plugins"):
        shutil.copytree(ROOT / part, src / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, src / part)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAPGAP_CACHE")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]

    def run(*cmd, cwd=tmp_path):
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        return p.stdout

    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src))
    wheel, = (tmp_path / "dist").glob("capgap-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    run(*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    venv_site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(str(python), "-c", "import capgap; print(capgap.__file__)", cwd=elsewhere)
    assert where.startswith(str(venv)), where  # the wheel's capgap, not the checkout's

    out = run(str(venv / "bin" / "capgap"), "predict", "--student", "300M", cwd=elsewhere)
    assert "pick teacher=" in out and "no teacher in the zoo" not in out, out

    # plan composes the wheel's configs with Hydra (a path beside the package does not exist there)
    out = run(str(venv / "bin" / "capgap"), "plan", "experiment=micro_law", cwd=elsewhere)
    assert "capgap plan: " in out and "total: " in out, out

    with (elsewhere / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["teacher_params", "student_params", "metric", "seed"])
        w.writeheader()
        w.writerows({k: r[k] for k in w.fieldnames} for r in law_rows(seeds=1))
    out = run(str(venv / "bin" / "capgap"), "fit", "--csv", "results.csv", "--bootstrap", "20", cwd=elsewhere)
    assert (elsewhere / "capgap_fit" / "fit.json").is_file(), out
