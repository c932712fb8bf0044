"""The documentation: a README that fits a first visit, and no link to a missing file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 300
# Inline Markdown links and images: [text](target) and ![alt](target).
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def documents() -> list[Path]:
    return [
        README,
        ROOT / "CONTRIBUTING.md",
        ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text (anchors kept), code left out."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = []
    for target in LINK.findall(prose):
        path = target.split("#", 1)[0]
        if path and ":" not in path and not path.startswith("/"):
            targets.append(target)
    return targets


def heading_anchors(text: str) -> set[str]:
    """The anchors a repository host gives a Markdown file's headings (GitHub's rule)."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", text), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def missing_targets(document: Path) -> list[str]:
    """Links to a file that does not exist, or to a heading a Markdown file does not have."""
    missing = []
    for target in relative_links(document.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        file = document.parent / path
        if not file.exists() or (
            anchor
            and file.suffix == ".md"
            and anchor not in heading_anchors(file.read_text(encoding="utf-8"))
        ):
            missing.append(target)
    return missing


def test_the_readme_fits_a_first_visit() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file(document: Path) -> None:
    assert document.exists()
    assert missing_targets(document) == []


def test_a_link_to_a_missing_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# There\n\n## A part: `make x`\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[a](there.md#a-part-make-x) [b](gone.md) ![c](img/none.png) [d](there.md#nowhere)\n"
        "[e](https://example.com/x.md) `[f](in-a-span.md)`\n```\n[g](in-a-block.md)\n```\n",
        encoding="utf-8",
    )
    assert missing_targets(page) == ["gone.md", "img/none.png", "there.md#nowhere"]


def test_every_make_target_is_in_the_readme() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = re.findall(r"^([a-z][a-z-]*):.*## ", makefile, re.MULTILINE)
    readme = README.read_text(encoding="utf-8")
    assert "docs" in targets
    assert [t for t in targets if f"`make {t}" not in readme] == []


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs --strict fails on a broken link, a missing anchor or a page left out of nav."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "_repo" / "benchmarks" / "README.md").exists()
