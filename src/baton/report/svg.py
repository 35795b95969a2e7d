"""Inline SVG bar charts for the handoff report: no script, no font, no external asset."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD = 360, 140, 22


def bars(labels: Sequence[str], values: Sequence[float], title: str, *,
         unit: str = "") -> str:
    """A bar per value, its label below and its value above, scaled to the largest."""
    if not values:
        return ""
    top = max(max(values), 1e-12)
    step = (WIDTH - 2 * PAD) / len(values)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
             f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
             f"<title>{escape(title)}</title>"]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = (HEIGHT - 3 * PAD) * value / top
        x = PAD + i * step
        y = HEIGHT - 2 * PAD - h
        parts.append(f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{max(step - 4, 1):.1f}" '
                     f'height="{h:.1f}"><title>{escape(label)}: {value:g}{unit}</title></rect>')
        if len(values) <= 12:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{y - 3:.1f}" class="v">'
                         f"{_short(value)}{escape(unit)}</text>")
        parts.append(f'<text x="{x + step / 2:.1f}" y="{HEIGHT - PAD - 6:.1f}" class="l" '
                     f'transform="rotate(25 {x + step / 2:.1f} {HEIGHT - PAD - 6:.1f})">'
                     f"{escape(label[:14])}</text>")
    parts.append(f'<line x1="{PAD}" y1="{HEIGHT - 2 * PAD}" x2="{WIDTH - PAD}" '
                 f'y2="{HEIGHT - 2 * PAD}" class="axis"/></svg>')
    return "".join(parts)


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    if value < 1:
        return f"{value:.2f}"
    return f"{value:.0f}"


def histogram_labels(edges: Sequence[float]) -> list[str]:
    """Bin labels of a numeric reference histogram: ``<e0``, ``e0–e1``, …, ``≥en``."""
    if not edges:
        return ["all"]
    labels = [f"<{edges[0]:g}"]
    labels += [f"{a:g}–{b:g}" for a, b in zip(edges, edges[1:], strict=False)]
    labels.append(f"≥{edges[-1]:g}")
    return labels
