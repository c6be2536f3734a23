"""plotext charts (through textual-plotext). Each chart redraws only when its data changed
(on EpochEnded, ThresholdComputed, Evaluated …), never on BatchProgress."""
from __future__ import annotations

import math
from typing import Any, Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container, Vertical
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static
import plotext._utility as plotext_utility
from textual_plotext import PlotextPlot

from .. import fmt
from ..state import RunView


def _keep_order(data) -> list:
    return list(dict.fromkeys(data))


# plotext drops duplicate ticks through a set of (tick, label) pairs, whose order follows
# Python's per-process string hashing; where labels meet, the one drawn last wins, so the
# same chart rendered differently from one process to the next (a flaky 80 x 24 snapshot).
# Its own commented-out alternative keeps the order given.
plotext_utility.no_duplicates = _keep_order

TRAIN = (90, 160, 255)
VAL = (255, 170, 60)
HARD = (200, 120, 255)
THRESH = (255, 80, 80)
BOUNDARY = (130, 130, 130)
BARS = [(80, 200, 120), (90, 160, 255), (255, 170, 60), (200, 120, 255)]


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def log_axis(choice: Optional[bool], values: list[float]) -> bool:
    """Whether a PPL chart has a log y axis: `choice` (l pressed), else when the plotted
    values span more than 10× (epoch 1 against the rest, which a linear axis flattens)."""
    if choice is not None:
        return choice
    return bool(values) and max(values) > 10 * min(values)


def ppl_values(view: RunView) -> list[float]:
    """The values the PPL chart plots (what its default axis is chosen from)."""
    return [v for e in view.epochs for v in (e.train_ppl, e.val_ppl) if _ok(v)]


def _log_ticks(values: list[float], n: int = 5) -> tuple[list[float], list[str]]:
    """Tick positions (log10 units) and their labels in the original units: round values
    (1, 2, 5 × 10^k) inside the range where there are at least two, else `n` even steps."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    if hi - lo < 1e-9:
        return [lo], [fmt.tick(10 ** lo)]
    round_values = _round_values_between(10 ** lo, 10 ** hi, max_ticks=n + 1)
    if len(round_values) >= 2:
        return [math.log10(v) for v in round_values], [fmt.tick(v) for v in round_values]
    ticks = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    return ticks, [fmt.tick(10 ** t) for t in ticks]


def _round_values_between(low: float, high: float, max_ticks: int) -> list[float]:
    """1, 2, 5 × 10^k between low and high; thinned to powers of ten (then every other
    one …) while there are more than `max_ticks`."""
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
        values = [m * 10.0 ** k for k in range(math.floor(math.log10(low)),
                                               math.ceil(math.log10(high)) + 1)
                  for m in mantissas]
        inside = [v for v in values if low * (1 - 1e-9) <= v <= high * (1 + 1e-9)]
        if len(inside) <= max_ticks:
            return inside
    return inside[::math.ceil(len(inside) / max_ticks)]


class Chart(PlotextPlot):
    """A plot that redraws from a data key: `show(view, **opts)` replots only on change."""


    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._key: Any = object()
        self._args: tuple = (None, {})

    def data_key(self, view: RunView, **opts) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def draw(self, plt, view: RunView, **opts) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def show(self, view: RunView, **opts) -> None:
        key = self.data_key(view, **opts)
        if key == self._key:
            return
        self._key = key
        self._args = (view, opts)
        self.refresh()

    def render(self):
        # Built again only when the data or the size changed: flipping between charts (n)
        # while training runs then costs no plotext build. A fresh figure for every build:
        # plotext keeps state between builds at different sizes (bars moved by a cell).
        key = (self._key, self.size, self.app.theme)
        cached = getattr(self, "_rendered", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        view, opts = self._args
        self.plt.clear_figure()
        if view is None:
            self.empty(self.plt, "")
        else:
            self.draw(self.plt, view, **opts)
        rendered = super().render()
        self._rendered = (key, rendered)
        return rendered

    def fitting_title(self, *titles: str) -> str:
        """The first of `titles` (longest first) that fits the chart's width; plotext drops
        a title that does not fit (a narrow chart, e.g. at 80 columns)."""
        for title in titles:
            if len(title) <= self.size.width - 2:
                return title
        return titles[-1]

    @staticmethod
    def empty(plt, message: str) -> None:
        plt.title(message)
        plt.xticks([], [])
        plt.yticks([], [])


class PplChart(Chart):
    """Train and val PPL per epoch across all stages; dotted lines at stage boundaries."""


    def data_key(self, view: RunView, log_y: Optional[bool] = None, **_: Any) -> Any:
        return (len(view.epochs), log_y)

    def draw(self, plt, view: RunView, log_y: Optional[bool] = None, **_: Any) -> None:
        epochs = view.epochs
        if not epochs:
            self.empty(plt, "train / val PPL — waiting for the first epoch")
            return
        xs = list(range(1, len(epochs) + 1))
        tr = [(x, e.train_ppl) for x, e in zip(xs, epochs) if _ok(e.train_ppl)]
        va = [(x, e.val_ppl) for x, e in zip(xs, epochs) if _ok(e.val_ppl)]
        every = [v for _, v in tr + va]
        log_y = log_axis(log_y, every)

        def y(v: float) -> float:
            return math.log10(v) if log_y else v

        if tr:
            plt.plot([x for x, _ in tr], [y(v) for _, v in tr], label="train",
                     marker="braille", color=TRAIN)
        if va:
            plt.plot([x for x, _ in va], [y(v) for _, v in va], label="val",
                     marker="braille", color=VAL)
        # stage boundaries and labels
        labels, ticks = [], []
        for i, e in enumerate(epochs):
            if i > 0 and e.stage != epochs[i - 1].stage:
                plt.vline(i + 0.5, BOUNDARY)
            ticks.append(i + 1)
            labels.append(f"{e.epoch}" if e.epoch > 1 or i == 0 else f"S{e.stage}")
        step = max(1, len(ticks) // 12)
        plt.xticks(ticks[::step], labels[::step])
        if log_y and every:
            yt, yl = _log_ticks(every)
            plt.yticks(yt, yl)
        scale = " · log y" if log_y else ""
        plt.title(self.fitting_title(f"train / val PPL per epoch{scale}",
                                     f"train / val PPL{scale}", f"PPL{scale}"))


class HardPplChart(Chart):
    """Hard-token PPL per epoch of the stages trained on hard tokens (stage >= 2), with the
    mined (previous stage's) hard PPL as a reference line."""


    def data_key(self, view: RunView, log_y: Optional[bool] = None, **_: Any) -> Any:
        return (len(view.epochs), len(view.hard_collected), log_y)

    def draw(self, plt, view: RunView, log_y: Optional[bool] = None, **_: Any) -> None:
        by_stage: dict[int, list] = {}
        for e in view.epochs:
            if e.stage >= 2 and _ok(e.hard_ppl):
                by_stage.setdefault(e.stage, []).append(e)
        refs = [(s, h.hard_ppl) for s, h in sorted(view.hard_collected.items())
                if _ok(h.hard_ppl)]
        if not by_stage and not refs:
            self.empty(plt, "hard PPL — after mining")
            return
        every = [r for _, r in refs] + [e.hard_ppl for eps in by_stage.values() for e in eps]
        log_y = log_axis(log_y, every)

        def y(v: float) -> float:
            return math.log10(v) if log_y else v

        for i, (stage, eps) in enumerate(sorted(by_stage.items())):
            xs = [e.epoch for e in eps]
            ys = [e.hard_ppl for e in eps]
            plt.plot(xs, [y(v) for v in ys], label=f"stage {stage}" if len(by_stage) > 1
                     else None, marker="braille",
                     color=HARD if i == 0 else BARS[i % len(BARS)])
        all_epochs = sorted({e.epoch for eps in by_stage.values() for e in eps})
        if all_epochs:
            step = max(1, len(all_epochs) // 12)
            plt.xticks(all_epochs[::step], [str(x) for x in all_epochs[::step]])
        for stage, ref in refs[-1:]:
            plt.hline(y(ref), BOUNDARY)
            if not by_stage:
                plt.scatter([1], [y(ref)], label=f"stage {stage} exit", color=BOUNDARY)
        if log_y and every:
            yt, yl = _log_ticks(every)
            plt.yticks(yt, yl)
        ref_txt = f" · ── mined {fmt.ppl(refs[-1][1])}" if refs else ""
        scale = " · log y" if log_y else ""
        plt.title(self.fitting_title(f"hard PPL per epoch{ref_txt}{scale}",
                                     f"hard PPL{ref_txt}{scale}", f"hard PPL{scale}"))


class ConfidenceChart(Chart):
    """The histogram of exit confidences (ThresholdComputed) with the threshold line."""


    def __init__(self, stage: Optional[int] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stage = stage  # None: the latest mining

    def _event(self, view: RunView):
        stage = self.stage if self.stage is not None else view.last_mining_stage
        return view.threshold_computed.get(stage) if stage is not None else None

    def data_key(self, view: RunView, **_: Any) -> Any:
        th = self._event(view)
        return None if th is None else (th.stage, th.t)

    def draw(self, plt, view: RunView, **_: Any) -> None:
        th = self._event(view)
        if th is None or not th.histogram_counts:
            self.empty(plt, "confidence histogram — after mining")
            return
        edges, counts = confidence_bins(th)
        # Bins as filled steps: plotext's bars fill each bar by a search quadratic in its
        # size (1.5 s for a weak model's tall first bin, the UI thread holding the GIL);
        # a line filled down to the axis costs a few ms. Below the threshold: hard tokens.
        for below, color in ((True, HARD), (False, TRAIN)):
            xs, ys = [], []
            for left, right, count in zip(edges, edges[1:], counts):
                if (left < th.threshold) == below:
                    xs += [left, right]
                    ys += [count, count]
            if xs:
                plt.plot(xs, ys, color=color, marker="sd", fillx=True)
        plt.vline(th.threshold, THRESH)
        plt.xlim(edges[0], edges[-1])
        plt.xticks([edges[0], th.threshold, edges[-1]],
                   [_conf_tick(edges[0]), f"thr {th.threshold:.4g}", _conf_tick(edges[-1])])
        top = max(counts) if counts else 0
        if top > 0:
            ticks = _round_values_between(max(1.0, top / 4), top, max_ticks=3)
            plt.yticks([0, *ticks], ["0", *(fmt.tick(t) for t in ticks)])
        tokens = f"{fmt.integer(th.tokens)} tokens"
        plt.title(self.fitting_title(f"confidence at layer {th.exit_layer} · {tokens}",
                                     f"confidence · layer {th.exit_layer}", "confidence"))


def confidence_bins(th) -> tuple[list[float], list[int]]:
    """The bins the engine fitted to the confidences (`zoom_*`), else (an event log from
    before them) the bins on [0, 1]."""
    if th.zoom_edges and th.zoom_counts:
        return th.zoom_edges, th.zoom_counts
    return th.histogram_edges, th.histogram_counts


def _conf_tick(x: float) -> str:
    return f"{x:.2g}" if 0 < abs(x) < 0.01 else f"{x:.3g}"


class RoutingChart(Chart):
    """Exit split: Evaluated.exit_ratios once evaluated, else EpochEnded.shallow_ratio."""


    def data_key(self, view: RunView, **_: Any) -> Any:
        return (len(view.epochs), view.evaluation is not None)

    def draw(self, plt, view: RunView, **_: Any) -> None:
        ev = view.evaluation
        if ev is not None:
            names = [f"exit @ layer {layer}" for layer in ev.exit_layers]
            values = [r * 100 for r in ev.exit_ratios]
            # one colour: with a colour per bar, plotext's pick for a shared cell depends on
            # set order (hash seed), which made screenshots differ between processes
            plt.bar(names, values, orientation="horizontal", width=0.5, color=BARS[0])
            plt.xlim(0, 100)
            plt.title("final routing " + " / ".join(fmt.pct(r) for r in ev.exit_ratios))
            return
        routed = [e for e in view.epochs if e.shallow_ratio is not None]
        if not routed:
            self.empty(plt, "routing split — during stage 2")
            return
        xs = list(range(1, len(routed) + 1))
        plt.plot(xs, [e.shallow_ratio * 100 for e in routed], label="shallow %",
                 marker="braille", color=BARS[0])
        plt.xticks(xs, [str(e.epoch) for e in routed])
        plt.title("val tokens at the shallow exit (%)")


CHARTS = (
    ("ppl", "PPL", PplChart),
    ("hard", "hard PPL", HardPplChart),
    ("confidence", "confidence", ConfidenceChart),
    ("routing", "routing", RoutingChart),
)


class ChartTabs(Widget):
    """The names of the charts with the selected one marked (used on narrow screens); where
    they do not all fit (80 columns), the selected one and its number."""

    index = reactive(0)

    def select(self, index: int) -> None:
        self.index = index

    def render(self) -> Text:
        return self.tabs(self.index, self.content_size.width)

    @staticmethod
    def tabs(index: int, width: int) -> Text:
        text = Text()
        for i, (_, name, _) in enumerate(CHARTS):
            if i:
                text.append(" │ ", style="dim")
            text.append(f" {name} ", style="bold reverse" if i == index else "dim")
        names = text.copy()
        text.append("   n: next chart · l: log-y", style="dim italic")
        if width and len(text) > width:
            text = names.append("  n next · l log-y", style="dim italic")
        if width and len(text) > width:
            text = Text(f" {CHARTS[index][1]} ", style="bold reverse")
            text.append(f" {index + 1}/{len(CHARTS)}", style="dim")
            text.append(" · n next · l log-y", style="dim italic")
        return text


class Charts(Vertical):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.selected = 0
        self.log_y: Optional[bool] = None  # None: log where the values span > 10× (l sets)

    def compose(self) -> ComposeResult:
        yield ChartTabs(id="chart-tabs")
        with Container(id="chart-grid"):
            for chart_id, _, cls in CHARTS:
                yield cls(id=f"chart-{chart_id}", classes="chart")

    def on_mount(self) -> None:
        self.select(self.selected)

    def select(self, index: int) -> None:
        self.selected = index % len(CHARTS)
        self.query_one(ChartTabs).select(self.selected)
        for i, chart in enumerate(self.query(Chart)):
            chart.set_class(i == self.selected, "-selected")

    def toggle_log_y(self, view: RunView) -> bool:
        """Switches the PPL charts to the other y axis (log / linear); whether it is log
        now."""
        self.log_y = not log_axis(self.log_y, ppl_values(view))
        self.show(view)
        return self.log_y

    def show(self, view: RunView) -> None:
        for chart in self.query(Chart):
            chart.show(view, log_y=self.log_y)
