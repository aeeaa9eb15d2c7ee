"""docs/configuration.md's table of config groups lists every option of every group in conf/."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def section(text: str, heading: str) -> str:
    """The body of `## heading`, up to the next `## `."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_configuration_lists_every_option_of_every_group():
    page = (ROOT / "docs" / "configuration.md").read_text()
    table = section(page, "Keys of each group")
    rows = {m.group(1): set(re.findall(r"`([^`]+)`", m.group(2)))
            for m in re.finditer(r"^\| `([\w/]+)` \| (.+?) \|", table, re.M)}
    conf = ROOT / "conf"
    groups = {str(d.relative_to(conf)) for d in conf.rglob("*") if d.is_dir() and any(d.glob("*.yaml"))}
    assert groups <= set(rows), sorted(groups - set(rows))
    missing = {g: sorted({p.stem for p in (conf / g).glob("*.yaml")} - rows[g]) for g in groups}
    assert not any(missing.values()), missing
