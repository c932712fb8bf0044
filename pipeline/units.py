"""Quantities with units: '16GiB', '2.5T' in; '12.6 MB (12.0 MiB)' out. No imports beyond
the standard library, so the configuration can check them before anything loads."""

from __future__ import annotations

import re

UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_quantity(text: str, what: str = "memory.budget") -> float:
    """'16GiB' -> 17179869184, '2.5T' -> 2.5e12, '1e9' -> 1e9 (a trailing B or FLOPS is ignored)."""
    m = re.fullmatch(
        r"\s*([0-9.]+(?:e[+-]?\d+)?)\s*([kmgt]i?)?\s*(b|bytes?|flops|flop/s)?\s*", str(text).lower()
    )
    if not m:
        raise ValueError(
            f"{what} must be a number with an optional unit such as 16GiB, 500MB "
            f"or 2.5T. Received: {text!r}"
        )
    return float(m.group(1)) * UNITS[m.group(2) or ""]


def format_bytes(n: float) -> str:
    """12613600 -> '12.6 MB (12.0 MiB)': decimal as textbooks count, binary as budgets do."""
    for dec, dname, binary, bname in (
        (1e12, "TB", 2**40, "TiB"),
        (1e9, "GB", 2**30, "GiB"),
        (1e6, "MB", 2**20, "MiB"),
        (1e3, "kB", 2**10, "KiB"),
    ):
        if n >= dec:
            return f"{n / dec:,.1f} {dname} ({n / binary:,.1f} {bname})"
    return f"{n:,.0f} B"


def format_count(n: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:,.2f} {suffix}"
    return f"{n:,.0f}"
