"""What `python run.py` shows on the terminal, run as a user types it (a tiny teacher, a tiny
corpus, its own cache, every folder in tmp): one `[capgap]` line per stage, bars titled by
their stage, no line twice, no library tips or benign warnings; the log file keeps them."""

import logging
import os
import re
import subprocess
import sys
import warnings
from collections import Counter

from test_distill_task import ROOT, cli, tiny_setup  # noqa: F401  (fixture)

from capgap.runtime import terminal

CONTROL = re.compile(r"(\x1b\[[0-9;]*[A-Za-z]|\r|\n)")
BAR = re.compile(r"^([\w -]+): .*\|.*\d+/[\d?]+ \[")


def screen(text: str) -> list[str]:
    """The lines a terminal ends up showing: text overwrites from the cursor, a carriage return
    goes back to the line's start, a newline down to the next, ESC[A (tqdm moving between its
    bars) up one; other escapes change no text."""
    lines, row, col = [[]], 0, 0
    for part in CONTROL.split(text):
        if part == "\n":
            row, col = row + 1, 0
            lines += [[] for _ in range(row + 1 - len(lines))]
        elif part == "\r":
            col = 0
        elif part == "\x1b[A":
            row = max(0, row - 1)
        elif part and not part.startswith("\x1b"):
            line = lines[row]
            line[col:col + len(part)] = part
            col += len(part)
    return ["".join(line).rstrip() for line in lines if "".join(line).strip()]


def test_run_py_terminal_is_quiet_and_says_each_stage_once(tiny_setup, tmp_path):
    root, corpus = tiny_setup
    run_dir = tmp_path / "run"
    args = cli(root, corpus, run_dir, "task=study", "student.size=20K", "prune=expressiveness",
               "prune.n_batches=2", "prune.batch_size=2", "prune.block_size=16", "prune.multiple=4",
               f"store.url={tmp_path / 'store.sqlite'}", "trainer.enable_progress_bar=true")
    env = {**os.environ, "CAPGAP_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=env,
                       capture_output=True, timeout=300)  # bytes: text mode would turn \r into \n
    out, err = p.stdout.decode(), p.stderr.decode()
    assert p.returncode == 0, err[-3000:]
    shown = screen(out) + screen(err)
    everything = "\n".join(shown)

    stages = [line.split(":")[0] for line in shown if line.startswith("[capgap]")]
    for stage in ("tokenizing", "scoring", "pruning", "distilling", "evaluating", "writing the store"):
        assert stages.count(f"[capgap] {stage}") == 1, everything
    titles = {m.group(1) for line in shown if (m := BAR.match(line))}
    assert titles == {"scoring", "distilling", "evaluating"}, everything
    text = [line for line in shown if not BAR.match(line)]
    assert [l for l, n in Counter(text).items() if n > 1] == [], everything
    for noise in ("Epoch", "litlogger", "Tip:", "GPU available", "Warning", "eval mode",
                  "configure_optimizers", "val_dataloader", "deprecated"):
        assert noise not in everything, everything
    # on one screen, apart from the bars
    assert len(text) <= 20, everything

    log = (run_dir / "run.log").read_text()
    assert "GPU available" in log and "litlogger" in log  # the full detail is in the log file
    assert "[capgap] distilling" in log and "py.warnings" in log


def test_benign_means_by_message_or_a_library_deprecation():
    lib = "/site-packages/lightning/pytorch/loops/fit_loop.py"
    assert terminal.is_benign("Found 3 module(s) in eval mode at the start", UserWarning, lib)
    assert terminal.is_benign("x is deprecated", DeprecationWarning, lib)
    assert not terminal.is_benign("x is deprecated", DeprecationWarning, terminal.__file__)  # ours: shown
    assert not terminal.is_benign("the loss is NaN", UserWarning, lib)
    f = terminal.TerminalFilter()

    def record(name, level, **extra):
        r = logging.LogRecord(name, level, __file__, 1, "m", (), None)
        r.__dict__.update(extra)
        return r

    assert f.filter(record("capgap", logging.INFO))
    assert not f.filter(record("lightning.pytorch.utilities.rank_zero", logging.INFO))
    assert f.filter(record("py.warnings", logging.WARNING, benign=False))
    assert not f.filter(record("py.warnings", logging.WARNING, benign=True))
    with warnings.catch_warnings():
        seen = []
        logger = logging.getLogger("py.warnings")
        handler = logging.Handler()
        handler.emit = seen.append
        logger.addHandler(handler)
        try:
            warnings.simplefilter("always")
            warnings.showwarning = terminal._show_warning
            warnings.warn("Found 2 module(s) in eval mode", UserWarning)
        finally:
            logger.removeHandler(handler)
    assert len(seen) == 1 and seen[0].benign and "UserWarning" in seen[0].getMessage()
