"""MkDocs hook: links from the pages to repository files outside docs/.

A page links to a repository file outside docs/ with a relative path (``../README.md``,
``../benchmarks/README.md``), which reads right on a repository host and in an editor.
MkDocs knows only the files under docs/ and would report each such link as not found, so
this hook takes them out of its hands before it checks links: a target that exists is
copied into the built site under ``_repo/`` and the link points at the copy; a target that
does not exist is logged as a warning, which fails ``mkdocs build --strict``. Links within
docs/ are left to MkDocs's own checks (``validation`` in mkdocs.yml).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from mkdocs.utils import get_relative_url

log = logging.getLogger("mkdocs.hooks.repo_links")

INLINE_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
SCHEME = "repo-file:"  # a scheme, so that MkDocs's link check passes the link by
COPIES = "_repo"  # where the linked repository files go in the built site
_targets: set[str] = set()


def on_pre_build(config: Any) -> None:
    _targets.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config.docs_dir).resolve()
    root = Path(config.config_file_path).resolve().parent
    page_dir = (docs / page.file.src_uri).parent

    def outside_link(match: re.Match[str]) -> str:
        target = match.group(2)
        if ":" in target.split("#")[0] or target.startswith(("#", "/")):
            return match.group(0)  # external, absolute or an anchor: MkDocs's business
        path, _, anchor = target.partition("#")
        resolved = (page_dir / path).resolve()
        if resolved.is_relative_to(docs):
            return match.group(0)
        if not resolved.is_relative_to(root) or not resolved.exists():
            log.warning(
                "Doc file '%s' links to '%s', which is not a file of the repository",
                page.file.src_uri,
                target,
            )
            return match.group(0)
        relative = resolved.relative_to(root).as_posix()
        _targets.add(relative)
        url = f"{SCHEME}{relative}" + (f"#{anchor}" if anchor else "")
        return f"{match.group(1)}{url}{match.group(3)}"

    return INLINE_LINK.sub(outside_link, markdown)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    def local(match: re.Match[str]) -> str:
        return 'href="' + get_relative_url(f"{COPIES}/{match.group(1)}", page.url)

    return re.sub(r'href="' + re.escape(SCHEME) + r"([^\"#]*)", local, html)


def on_post_build(config: Any) -> None:
    root = Path(config.config_file_path).resolve().parent
    site = Path(config.site_dir)
    for relative in sorted(_targets):
        source, copy = root / relative, site / COPIES / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, copy, dirs_exist_ok=True)
        else:
            shutil.copy2(source, copy)
