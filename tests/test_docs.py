"""Every relative link in README.md and docs/*.md resolves: the file exists, the anchor is a
heading of that page (GitHub's slugs), and every docs page is reachable from the README."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose(path: Path) -> str:
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


def anchors(path: Path) -> set[str]:
    found, count = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.*)$", prose(path), flags=re.M):
        s = slug(heading)
        n = count.get(s, 0)
        found.add(s if n == 0 else f"{s}-{n}")  # GitHub numbers repeated headings
        count[s] = n + 1
    return found


def broken_links(pages: list[Path]) -> list[str]:
    broken = []
    for page in pages:
        for target in LINK.findall(prose(page)):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target}: no such heading in {dest.name}")
    return broken


def test_links_resolve():
    assert len(PAGES) > 5
    assert not broken_links(PAGES), "\n".join(broken_links(PAGES))


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in LINK.findall(prose(PAGES[0]))}
    assert not [p.name for p in PAGES[1:] if p.resolve() not in linked]


def test_a_broken_link_is_reported(tmp_path: Path):
    (tmp_path / "a.md").write_text("# Top\n## Two words\n[ok](#two-words) [x](#nope) [y](b.md)\n")
    assert broken_links([tmp_path / "a.md"]) == [
        "a.md: #nope: no such heading in a.md",
        "a.md: b.md: no such file",
    ]
