"""Small text helpers shared by command replies (tables as aligned lines, short times, sizes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime


def lines_table(rows: Sequence[Sequence[str]], *, header: Sequence[str] | None = None) -> str:
    """Rows as a monospace block, columns padded, so they read well on every platform."""
    all_rows = [list(header)] if header else []
    all_rows.extend([list(row) for row in rows])
    if not all_rows:
        return ""
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(all_rows[0]))]
    rendered = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in all_rows]
    return "```\n" + "\n".join(rendered) + "\n```"


def short_time(moment: datetime | None) -> str:
    """A UTC timestamp to the minute, or "-"."""
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def human_bytes(count: float | None) -> str:
    """1536 → "1.5 KiB"."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def clip(text: str, limit: int) -> str:
    """Text cut to `limit` characters with an ellipsis when cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
