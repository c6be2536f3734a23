"""The Pareto chart of a comparison: PPL (y) against MACs per token in millions (x).

Each series has its own colour and marker: a sweep is a line through its marked points, a
baseline a single marked point. The Pareto-optimal points (flagged by
`ashem_engine.compare`, never decided here) are joined by the frontier line. The input is
the dict `ashem_engine.compare.combine` returns; scaling MACs to millions and choosing the
y range are the only arithmetic, and both are display scaling.

Two y ranges (`show(comparison, zoomed=...)`, the `z` key of the comparison screen):
- all points;
- near the Pareto front (`zoom_top`): y from the lowest PPL up to the highest Pareto-optimal
  PPL plus 10 % of the lowest PPL. Points above it are not drawn (their lines run off the
  top: clipped, not squeezed); the x range stays that of all points.
The screen starts zoomed when that hides at least one point (`hidden_by_zoom`), else full.

A study's points (`ashem --compare STUDY_DIR`) are means over seeds and carry the engine's 95 %
intervals (`point["interval"]`): each is drawn as an error bar in the series' colour, a
vertical segment for PPL from its low to its high bound (the interval on the mean NLL shown
back as PPL, `interval["nll"]`: asymmetric, never below 0) and a horizontal one for MACs per
token. A bar is cut at the top of the view: the zoomed view's, and in the full view twice the
highest PPL (`BAR_REACH`; a 2-seed interval can reach 10^16 and would squeeze every point
onto the x axis); the title counts the bars cut. The y axis never goes below 0.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from ashem_engine.compare import pareto_rows

from .charts import Chart

SERIES_COLORS = [(90, 160, 255), (255, 170, 60), (80, 200, 120), (200, 120, 255),
                 (255, 100, 130), (100, 220, 220)]
MARKERS = ["•", "x", "+", "o", "*", "#", "@"]  # 7 against 6 colours: 42 distinct pairs
FRONTIER = (255, 230, 90)
FRONTIER_MARKER = "·"


def style(index: int) -> tuple[tuple[int, int, int], str]:
    """The colour and the marker of the index-th series (the table uses the same)."""
    return SERIES_COLORS[index % len(SERIES_COLORS)], MARKERS[index % len(MARKERS)]


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def drawable(points: list[dict]) -> list[dict]:
    return [p for p in points if _ok(p.get("ppl")) and _ok(p.get("macs_per_token"))]


def mmacs(point: dict) -> float:
    return point["macs_per_token"] / 1e6


ZOOM_MARGIN = 0.10  # of the lowest PPL, above the highest Pareto-optimal PPL
ZOOM_RULE = "y to top Pareto PPL + 10 % of lowest"
ZOOMED_TITLE = "PPL near the Pareto front"  # the titles start with these
FULL_TITLE = "PPL, all points"
BAR_REACH = 1.0  # the full view's error bars: cut at the highest PPL plus this much of it


def error_bars(point: dict) -> list[tuple[list[float], list[float]]]:
    """The point's error bars as (xs, ys) segments, from the interval the engine gave it:
    none for a single run or a single seed."""
    interval = point.get("interval") or {}
    bars = []
    nll, macs = interval.get("nll") or {}, interval.get("macs_per_token") or {}
    if _finite(nll.get("ppl_lo")) and _finite(nll.get("ppl_hi")):
        bars.append(([mmacs(point)] * 2, [nll["ppl_lo"], nll["ppl_hi"]]))
    if _finite(macs.get("low")) and _finite(macs.get("high")):
        bars.append(([macs["low"] / 1e6, macs["high"] / 1e6], [point["ppl"]] * 2))
    return bars


def _all_drawable(comparison: dict) -> list[dict]:
    return [p for s in comparison.get("series", []) for p in drawable(s.get("points", []))]


def zoom_top(comparison: dict) -> Optional[float]:
    """The highest PPL the zoomed view shows: the highest Pareto-optimal PPL plus 10 % of
    the lowest PPL (never above the highest point); None without a drawable Pareto point."""
    points = _all_drawable(comparison)
    front = [p["ppl"] for p in points if p.get("pareto")]
    if not front:
        return None
    lowest = min(p["ppl"] for p in points)
    return min(max(front) + ZOOM_MARGIN * lowest, max(p["ppl"] for p in points))


def hidden_by_zoom(comparison: dict) -> int:
    """How many drawable points lie above the zoomed view (the table lists them all)."""
    top = zoom_top(comparison)
    return 0 if top is None else sum(p["ppl"] > top for p in _all_drawable(comparison))


def fit_title(parts: list[str], width: int) -> str:
    """The parts joined by " · ", in order, leaving out those that would not fit in `width`
    (plotext drops a title wider than the plot); the first part is always kept."""
    title = parts[0]
    for part in parts[1:]:
        if len(title) + 3 + len(part) <= width:
            title += " · " + part
    return title


class ParetoChart(Chart):
    """`show(comparison, zoomed=False)`: the comparison dict stands where the other charts
    take a view. After each build, `ylim` / `xlim` hold the limits set and `hidden` the
    number of points left out by the zoom and `cut` that of error bars cut at the top (for
    tests)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xlim: Optional[tuple[float, float]] = None
        self.ylim: Optional[tuple[float, float]] = None
        self.hidden = self.cut = 0

    def data_key(self, comparison: dict, zoomed: bool = False, **_: Any) -> Any:
        return (comparison, zoomed)

    def draw(self, plt, comparison: dict, zoomed: bool = False,  # type: ignore[override]
             **_: Any) -> None:
        series = [(i, s, drawable(s.get("points", [])))
                  for i, s in enumerate(comparison.get("series", []))]
        series = [(i, s, pts) for i, s, pts in series if pts]
        self.xlim = self.ylim = None
        self.hidden = self.cut = 0
        if not series:
            self.empty(plt, "PPL against MACs per token — no sweep to show")
            return
        every = [p for _, _, pts in series for p in pts]
        top = zoom_top(comparison) if zoomed else None
        top = max(p["ppl"] for p in every) if top is None else top

        def shown(pts: list[dict]) -> list[dict]:
            return [p for p in pts if p["ppl"] <= top]

        for i, s, pts in series:  # lines first: the markers go on top; plotext clips them
            if s.get("kind") == "sweep" and len(pts) > 1:
                plt.plot([mmacs(p) for p in pts], [p["ppl"] for p in pts],
                         marker="braille", color=style(i)[0])
        frontier = shown(drawable(pareto_rows(comparison)))
        visible = [(i, s, shown(pts)) for i, s, pts in series]
        visible = [(i, s, pts) for i, s, pts in visible if pts]
        bar_ys = self._draw_error_bars(plt, visible, top if zoomed else top * (1 + BAR_REACH))
        self.hidden = len(every) - sum(len(pts) for _, _, pts in visible)
        labels = len(visible) + bool(frontier)
        rows = max(1, self.size.height - 4)  # the canvas: less title, x ticks and label
        legend = labels + 1 <= rows // 2  # else the table's series column is the legend
        if frontier:
            plt.plot([mmacs(p) for p in frontier], [p["ppl"] for p in frontier],
                     marker=FRONTIER_MARKER, color=FRONTIER,
                     label="Pareto frontier" if legend else None)
        for i, s, pts in visible:
            color, marker = style(i)
            plt.scatter([mmacs(p) for p in pts], [p["ppl"] for p in pts], marker=marker,
                        color=color, label=s.get("label", "?") if legend else None)
        room = (labels + 1) / max(1, rows - labels - 1) if legend else 0.0
        self._set_limits(plt, [mmacs(p) for p in every],
                         [p["ppl"] for _, _, pts in visible for p in pts] + bar_ys + [top],
                         room)
        plt.xlabel("MMACs per token")
        self._title(plt, zoomed, legend)

    def _title(self, plt, zoomed: bool, legend: bool) -> None:
        if zoomed:
            parts = [ZOOMED_TITLE, ZOOM_RULE,
                     f"{self.hidden} point{'s' * (self.hidden != 1)} above not drawn"]
        else:
            parts = [FULL_TITLE]
        if self.cut:
            parts.append(f"{self.cut} error bar{'s' * (self.cut != 1)} cut at the top")
        if not zoomed:
            parts.append("lower left is better")
        if not legend:
            parts.append(f"{FRONTIER_MARKER * 2} Pareto frontier · markers as in the table")
        # plotext centres the title on the canvas (right of the y ticks) and drops it when
        # it does not fit there: 10 columns for the ticks ("12345.6┤" and a margin)
        plt.title(fit_title(parts, self.size.width - 10))

    def _draw_error_bars(self, plt, visible: list, top: float) -> list[float]:
        """Each shown point's error bars (under its marker), cut at `top` (counted in `cut`);
        the PPLs they reach, so that the y range takes them in."""
        reach = []
        for i, _, pts in visible:
            for p in pts:
                for xs, ys in error_bars(p):
                    self.cut += max(ys) > top
                    plt.plot(xs, [min(y, top) for y in ys], marker="braille",
                             color=style(i)[0])
                    reach += [min(y, top) for y in ys]
        return reach

    def _set_limits(self, plt, xs: list[float], ys: list[float], room: float) -> None:
        """A margin around the points; `room`: above them, for the legend (upper left)."""
        def spread(lo: float, hi: float) -> float:
            return (hi - lo) or max(abs(hi) * 0.1, 1e-9)

        dx = spread(min(xs), max(xs))
        self.xlim = (min(xs) - dx * 0.03, max(xs) + dx * 0.03)
        dy = spread(min(ys), max(ys))  # PPLs: all > 0, so the axis stops at 0
        self.ylim = (max(min(ys) - dy * 0.05, 0.0), max(ys) + dy * max(room, 0.05))
        plt.xlim(*self.xlim)
        plt.ylim(*self.ylim)
