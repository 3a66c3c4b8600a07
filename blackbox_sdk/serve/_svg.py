"""Inline SVG line charts drawn on the server: the status page needs no JavaScript and no build step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

WIDTH, HEIGHT = 640, 180
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 12, 12, 26
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea")


def _scale(values: Sequence[float], top: float) -> list[tuple[float, float]]:
    """Points of a series in the plot area: x evenly spaced, y from 0 (bottom) to `top`."""
    inner_w, inner_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    step = inner_w / max(len(values) - 1, 1)
    return [(PAD_LEFT + i * step, PAD_TOP + inner_h * (1 - value / top)) for i, value in enumerate(values)]


def line_chart(title: str, x_labels: Sequence[str], series: Mapping[str, Sequence[float]]) -> str:
    """An <svg> with one polyline and a dot per point for each named series, a y scale from 0 and the first and last x labels."""
    top = max((max(values, default=0) for values in series.values()), default=0) or 1
    parts = [
        (
            f'<svg class="chart" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
        ),
        f"<title>{escape(title)}</title>",
        f'<line x1="{PAD_LEFT}" y1="{HEIGHT - PAD_BOTTOM}" x2="{WIDTH - PAD_RIGHT}" y2="{HEIGHT - PAD_BOTTOM}" stroke="#888"/>',
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{HEIGHT - PAD_BOTTOM}" stroke="#888"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" text-anchor="end" font-size="10">{_number(top)}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{HEIGHT - PAD_BOTTOM}" text-anchor="end" font-size="10">0</text>',
    ]
    if x_labels:
        parts.append(f'<text x="{PAD_LEFT}" y="{HEIGHT - 8}" font-size="10">{escape(x_labels[0])}</text>')
        parts.append(f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 8}" text-anchor="end" font-size="10">{escape(x_labels[-1])}</text>')
    for number, (name, values) in enumerate(series.items()):
        colour = COLOURS[number % len(COLOURS)]
        points = _scale(values, top)
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        parts += [f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/>' for x, y in points]
        legend_x = PAD_LEFT + 8 + number * 110
        parts.append(f'<text x="{legend_x}" y="{PAD_TOP + 10}" font-size="11" fill="{colour}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _number(value: float) -> str:
    """A compact axis label."""
    return f"{value:g}"
