"""The README is a front door and docs/ holds the rest: the README stays short, every relative
link in README.md and docs/ lands on a file (and heading) that exists, no page names a folder
of one machine, and docs/configuration.md's table of config groups lists every option of
every group in conf/."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
COMMAND_FENCES = {"bash", "sh", "shell", "console"}
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
# absolute paths that exist on one machine only: a checkout, a home folder, a pytest tmp dir
MACHINE_PATH = re.compile(r"/work/|/root/|/home/|/tmp/pytest|/Users/")


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


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 180, f"README.md has {len(lines)} lines; move a topic into docs/"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    """Relative links of a markdown page (code blocks aside) whose file, or heading, is not there."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_land(page):
    assert broken_links(page) == []


def machine_paths(text: str) -> list[str]:
    """Lines naming a folder of one machine, outside fenced blocks of commands (```bash)."""
    kept = FENCE.sub(lambda m: "" if m.group(1).strip() in COMMAND_FENCES else m.group(0), text)
    return [line for line in kept.splitlines() if MACHINE_PATH.search(line)]


def test_machine_paths_are_found():
    """The check below can fail: prose, inline code and non-command blocks are all read."""
    assert machine_paths("the cache was `CAPGAP_CACHE=/work/cache18`") != []
    assert machine_paths("see /root/.cache/capgap/x") != []
    assert machine_paths("a tmp dir /tmp/pytest-of-me/pytest-3/x") != []
    assert machine_paths("```\nwrote /home/me/fit.json\n```\n") != []
    assert machine_paths("```python\nload('/Users/me/student')\n```\n") != []
    assert machine_paths("```bash\ncd /work/x && python run.py\n```\n") == []
    assert machine_paths("`CAPGAP_CACHE=$(mktemp -d)`, default `~/.cache/capgap`") == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_path_of_one_machine(page):
    assert machine_paths(page.read_text()) == []


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(readme) if not re.match(r"[a-z]+:", t)}
    unlinked = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert unlinked == [], unlinked
