"""The README's config-group table lists every option of every group in conf/."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_option_of_every_group():
    readme = (ROOT / "README.md").read_text()
    rows = {m.group(1): set(re.findall(r"`([^`]+)`", m.group(2)))
            for m in re.finditer(r"^\| `([\w/]+)` \| (.+?) \|", readme, re.M)}
    conf = ROOT / "conf"
    groups = {str(d.relative_to(conf)) for d in conf.rglob("*") if d.is_dir() and any(d.glob("*.yaml"))}
    assert groups <= set(rows), sorted(groups - set(rows))
    missing = {g: sorted({p.stem for p in (conf / g).glob("*.yaml")} - rows[g]) for g in groups}
    assert not any(missing.values()), missing
