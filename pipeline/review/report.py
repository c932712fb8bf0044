"""The review's HTML page: ranked photos as thumbnails, one self-contained file.

Each thumbnail is the photo as a viewer shows it (``pipeline.images.load_rgb``: EXIF
orientation applied), shrunk to THUMB pixels and inlined as JPEG, so the page opens
anywhere without the photos' folder. The full ranking is in the CSV files beside it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.evaluate.report import STYLE

THUMB = 128  # longest side of a thumbnail, in pixels
SHOWN_SUSPECTS = 40
SHOWN_OUTLIERS = 24
SHOWN_GROUPS = 50
EXTRA_STYLE = """
.photos { display: flex; flex-wrap: wrap; gap: 0.6rem; }
.photo { width: 150px; font-size: 0.78rem; overflow-wrap: anywhere; }
.photo img { display: block; max-width: 140px; max-height: 140px; }
.photo.flagged { outline: 2px solid #c40; outline-offset: 2px; }
.group { border: 1px solid #ddd; border-radius: 6px; padding: 0.4rem; margin: 0.5rem 0; }
"""


@dataclass(frozen=True)
class Suspect:
    path: str
    split: str
    given: str
    suggested: str
    p_given: float
    p_suggested: float
    flagged: bool


@dataclass(frozen=True)
class Outlier:
    path: str
    split: str
    label: str
    score: float


@dataclass(frozen=True)
class NearGroup:
    members: list[tuple[str, str, str]]  # (path, label, split)

    @property
    def mixed_labels(self) -> bool:
        return len({label for _, label, _ in self.members}) > 1


@dataclass(frozen=True)
class ReviewPage:
    title: str
    summary: dict[str, Any]
    suspects: Sequence[Suspect]  # most suspect first
    outliers: Sequence[Outlier]  # most atypical first
    near_groups: Sequence[NearGroup]
    exclude_file: Path


def thumbnail(path: str | Path) -> str:
    """An <img> of the photo shrunk to THUMB pixels, or a note when it cannot be read."""
    from PIL import Image

    from pipeline.images import load_rgb

    try:
        image = Image.fromarray(load_rgb(path))
    except (OSError, ValueError) as exc:
        return f'<p class="muted">(not readable now: {html.escape(str(exc))})</p>'
    image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(Path(path).name)}">'


def _photo(path: str, lines: list[str], flagged: bool = False) -> str:
    text = "<br>".join(lines)
    css = "photo flagged" if flagged else "photo"
    return (
        f'<div class="{css}" title="{html.escape(path)}">{thumbnail(path)}{text}<br>'
        f'<span class="muted">{html.escape(Path(path).name)}</span></div>'
    )


def _suspects(suspects: Sequence[Suspect]) -> str:
    cards = [
        _photo(
            s.path,
            [
                f"filed as <b>{html.escape(s.given)}</b> ({s.p_given:.2f})",
                f"looks like <b>{html.escape(s.suggested)}</b> ({s.p_suggested:.2f})"
                if s.suggested != s.given
                else "no other class more likely",
                f'<span class="muted">{s.split}{", flagged" if s.flagged else ""}</span>',
            ],
            s.flagged,
        )
        for s in suspects[:SHOWN_SUSPECTS]
    ]
    return f'<div class="photos">{"".join(cards)}</div>'


def _outliers(outliers: Sequence[Outlier]) -> str:
    cards = [
        _photo(o.path, [f"{html.escape(o.label)}, {o.split}", f"score {o.score:.3f}"])
        for o in outliers[:SHOWN_OUTLIERS]
    ]
    return f'<div class="photos">{"".join(cards)}</div>'


def _groups(groups: Sequence[NearGroup]) -> str:
    if not groups:
        return "<p>No near-duplicate groups (data.near_duplicate_bits).</p>"
    blocks = []
    for number, group in enumerate(groups[:SHOWN_GROUPS], start=1):
        warn = ' <span class="warning">(labels differ)</span>' if group.mixed_labels else ""
        cards = "".join(
            _photo(path, [f"{html.escape(label)}, {split}"]) for path, label, split in group.members
        )
        blocks.append(
            f'<div class="group"><b>group {number}</b>{warn}<div class="photos">{cards}</div></div>'
        )
    more = len(groups) - SHOWN_GROUPS
    tail = f"<p class='muted'>{more} more in near_duplicates.csv</p>" if more > 0 else ""
    return "".join(blocks) + tail


def render_review(page: ReviewPage) -> str:
    s = page.summary
    exclude = html.escape(str(page.exclude_file))
    sections = [
        f"<h1>{html.escape(page.title)}</h1>",
        f'<p class="muted">{html.escape(str(s["backbone"]))} features at {s["image_size"]}px; '
        f"{s['judged_photos']} training and validation photos judged, {s['all_photos']} in "
        "all</p>",
        "<p>Nothing here was moved or changed. To take a photo out of the split, add its path "
        f"(one a line) to <code>{exclude}</code> and run <code>make data</code>; to correct a "
        "label, move the file to the right class folder yourself.</p>",
        f"<h2>Suspected label errors ({s['label_issues']} flagged)</h2>",
        f"<p>Out-of-fold probabilities of a logistic regression on frozen features "
        f"({s['folds']}-fold, C={s['probe_C']:g}: of {s['probe_C_grid']}, the lowest "
        "out-of-fold log loss), judged by cleanlab's confident learning "
        f"(filter_by={s['filter_by']}); flagged photos are outlined, the most suspect first. "
        "Test photos are not judged here: their mistakes are in <code>make evaluate</code>'s "
        "report. "
        f"The first {SHOWN_SUSPECTS}; every photo is ranked in label_issues.csv.</p>",
        _suspects(page.suspects),
        "<h2>Outliers</h2>",
        "<p>Photos far from all the others in feature space (mean cosine distance to their "
        f"nearest neighbours, every split): the first {SHOWN_OUTLIERS}; all in outliers.csv.</p>",
        _outliers(page.outliers),
        f"<h2>Near-duplicate groups ({len(page.near_groups)})</h2>",
        "<p>Kept in one split by the data stage; a group whose labels differ is worth a look.</p>",
        _groups(page.near_groups),
    ]
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(page.title)}</title><style>{STYLE}{EXTRA_STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
