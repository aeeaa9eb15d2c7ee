"""The kill -9 soak through its command line: jobs SIGKILLed at random moments, rerun until
the sweep completes, and nothing lost, doubled, half-written or left over."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kill_nine_soak(tmp_path):
    p = subprocess.run([sys.executable, "-m", "capgap.commands.soak", "--work", str(tmp_path), "--kills", "10"],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=3000)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert int(re.search(r"^kills: +(\d+)", out, re.M)[1]) >= 10
    assert re.search(r"^points done: +6/6$", out, re.M)
    assert re.search(r"^partial rows: +0$", out, re.M)
    assert re.search(r"^temporary files left: +0$", out, re.M)
    assert re.search(r"^corrupt cache entries: +0 of", out, re.M)
    assert "equal: True" in out and out.rstrip().endswith("soak: PASS")
