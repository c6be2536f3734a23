"""plotext charts (through textual-plotext). Each chart redraws only when its data changed
(on EpochEnded, ThresholdComputed, Evaluated …), never on BatchProgress."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container, Vertical
from textual.reactive import reactive
from textual.widget import Widget
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


def si_tick(x: float) -> str:
    """A count on an axis, 3 significant digits with k / M / G / T / P: 4.2T (MACs), 1.5M."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix}"
    return f"{x:.3g}"


def si_labels(values: Sequence[float]) -> list[str]:
    return [si_tick(v) for v in values]


def time_labels(seconds: Sequence[float]) -> list[str]:
    """Seconds on an axis, all in one unit chosen by the largest: s, min or h (45s, 12min,
    1.5h)."""
    top = max((abs(s) for s in seconds), default=0.0)
    unit, scale = ("s", 1) if top < 120 else ("min", 60) if top < 3 * 3600 else ("h", 3600)
    return [f"{s / scale:.3g}{unit}" for s in seconds]


TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400)


@dataclass(frozen=True)
class XAxis:
    """What a chart against training puts on its x-axis: the epoch, or one of EpochEnded's run
    totals (`field`), the run's so far at the epoch's end."""
    name: str
    label: str  # in words, for a title
    short: str  # in a narrow title
    field: Optional[str] = None  # None: the epoch
    labels: Callable[[Sequence[float]], list[str]] = si_labels  # of ticks, in its units
    steps: tuple = ()  # round tick steps (time's); none: 1, 2, 5 x 10^k


X_AXES = (
    XAxis("epoch", "epoch", "epoch"),
    XAxis("tokens", "tokens trained", "tokens", "tokens_trained"),
    XAxis("time", "wall time", "time", "run_seconds", time_labels, TIME_STEPS),
    XAxis("macs", "training MACs", "MACs", "run_training_macs"),
)
EPOCH_AXIS = X_AXES[0]


def x_axis_named(name: str) -> XAxis:
    return next((a for a in X_AXES if a.name == name), EPOCH_AXIS)


def next_x_axis(name: str) -> str:
    """The axis after `name` in X_AXES, the first after the last."""
    names = [a.name for a in X_AXES]
    return names[(names.index(name) + 1) % len(names)] if name in names else names[0]


def axis_values(records: Sequence[Any], axis: XAxis) -> Optional[list[float]]:
    """Each record's position on `axis` (its field: an EpochEnded, or a curve point dict);
    None for the epoch axis, or where one lacks it (a log written before the field)."""
    if axis.field is None:
        return None
    values = [r.get(axis.field) if isinstance(r, dict) else getattr(r, axis.field, None)
              for r in records]
    return values if values and all(_finite(v) for v in values) else None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def axis_ticks(low: float, high: float, axis: XAxis, most: int = 5
               ) -> tuple[list[float], list[str]]:
    """Ticks at round values of `axis` between low and high (at least the two ends)."""
    span = high - low
    if span <= 0:
        return [low], axis.labels([low])
    base = 10.0 ** math.floor(math.log10(span / most))
    steps = [s for s in axis.steps if span / s <= most] or \
        [base * m for m in (1, 2, 5, 10) if span / (base * m) <= most]
    step = steps[0]
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    ticks = [k * step for k in range(first, last + 1)]
    if len(ticks) < 2:
        ticks = [low, high]
    return ticks, axis.labels(ticks)


def axis_title(axis: XAxis, wanted: XAxis) -> tuple[str, str]:
    """How a title names its x-axis, long and short: " per epoch" and "" (the x ticks say
    so), " vs training MACs" and " vs MACs"; where the log has no `wanted` figures (older
    logs), per epoch, saying so."""
    if axis.name != wanted.name:
        return f" per epoch (no {wanted.label} in this log)", " per epoch"
    if axis.field is None:
        return " per epoch", ""
    return f" vs {axis.label}", f" vs {axis.short}"


class Chart(PlotextPlot):
    """A plot that redraws from a data key: `show(view, **opts)` replots only on change."""


    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._key: Any = object()
        self._args: tuple = (None, {})
        self.x_ticks: tuple[list, list] = ([], [])  # the last build's (set_xticks)

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

    def set_xticks(self, plt, ticks: Sequence[float], labels: Sequence[str]) -> None:
        """The x ticks, also kept as `x_ticks` (positions, labels) for tests."""
        self.x_ticks = (list(ticks), list(labels))
        plt.xticks(self.x_ticks[0], self.x_ticks[1])

    @staticmethod
    def empty(plt, message: str) -> None:
        plt.title(message)
        plt.xticks([], [])
        plt.yticks([], [])


def placed(records: Sequence[Any], x_axis: str) -> tuple[XAxis, list[float]]:
    """The axis a chart shows and each record's x on it: `x_axis`'s values, or where the log
    lacks them (or x_axis is the epoch) 1, 2, 3 ... on the epoch axis."""
    wanted = x_axis_named(x_axis)
    values = axis_values(records, wanted)
    if values is None:
        return EPOCH_AXIS, [float(i) for i in range(1, len(records) + 1)]
    return wanted, values


class PplChart(Chart):
    """Train and val PPL per epoch across all stages, or against the run's tokens, time or
    training MACs (x_axis); dotted lines at stage boundaries. After a build: `axis` (shown),
    `series` {name: [(x, ppl), ...]} and `boundaries` (the x of each), for tests."""

    axis: XAxis = EPOCH_AXIS
    series: dict = {}
    boundaries: list = []

    def data_key(self, view: RunView, log_y: Optional[bool] = None, x_axis: str = "epoch",
                 **_: Any) -> Any:
        return (len(view.epochs), log_y, x_axis)

    def draw(self, plt, view: RunView, log_y: Optional[bool] = None, x_axis: str = "epoch",
             **_: Any) -> None:
        epochs = view.epochs
        self.series, self.boundaries = {}, []
        if not epochs:
            self.empty(plt, "train / val PPL — waiting for the first epoch")
            return
        self.axis, xs = placed(epochs, x_axis)
        tr = [(x, e.train_ppl) for x, e in zip(xs, epochs) if _ok(e.train_ppl)]
        va = [(x, e.val_ppl) for x, e in zip(xs, epochs) if _ok(e.val_ppl)]
        self.series = {"train": tr, "val": va}
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
        self._boundaries(plt, epochs, xs)
        if self.axis.field is None:
            ticks = list(range(1, len(epochs) + 1))
            labels = [f"{e.epoch}" if e.epoch > 1 or i == 0 else f"S{e.stage}"
                      for i, e in enumerate(epochs)]
            step = max(1, len(ticks) // 12)
            self.set_xticks(plt, ticks[::step], labels[::step])
        else:
            self.set_xticks(plt, *axis_ticks(min(xs), max(xs), self.axis))
        if log_y and every:
            yt, yl = _log_ticks(every)
            plt.yticks(yt, yl)
        scale = " · log y" if log_y else ""
        long, short = axis_title(self.axis, x_axis_named(x_axis))
        plt.title(self.fitting_title(f"train / val PPL{long}{scale}",
                                     f"train / val PPL{short}{scale}", f"PPL{short}{scale}",
                                     f"PPL{scale}"))

    def _boundaries(self, plt, epochs: Sequence[Any], xs: list[float]) -> None:
        """A dotted line where a stage starts: between epochs on the epoch axis, else at the
        run's total when the stage before ended (nothing trains in between)."""
        for i in range(1, len(epochs)):
            if epochs[i].stage != epochs[i - 1].stage:
                x = i + 0.5 if self.axis.field is None else xs[i - 1]
                self.boundaries.append(x)
                plt.vline(x, BOUNDARY)


class HardPplChart(Chart):
    """Hard-token PPL per epoch of the stages trained on hard tokens (stage >= 2), with the
    mined (previous stage's) hard PPL as a reference line; against the stage's epochs, or the
    run's tokens, time or training MACs (x_axis). `axis` and `series` as PplChart's."""

    axis: XAxis = EPOCH_AXIS
    series: dict = {}

    def data_key(self, view: RunView, log_y: Optional[bool] = None, x_axis: str = "epoch",
                 **_: Any) -> Any:
        return (len(view.epochs), len(view.hard_collected), log_y, x_axis)

    def draw(self, plt, view: RunView, log_y: Optional[bool] = None, x_axis: str = "epoch",
             **_: Any) -> None:
        self.axis, xs = placed(view.epochs, x_axis)
        by_stage: dict[int, list] = {}
        for x, e in zip(xs, view.epochs):
            if e.stage >= 2 and _ok(e.hard_ppl):
                x = e.epoch if self.axis.field is None else x
                by_stage.setdefault(e.stage, []).append((x, e.hard_ppl))
        self.series = {f"stage {n}": points for n, points in by_stage.items()}
        refs = [(s, h.hard_ppl) for s, h in sorted(view.hard_collected.items())
                if _ok(h.hard_ppl)]
        if not by_stage and not refs:
            self.empty(plt, "hard PPL — after mining")
            return
        every = [r for _, r in refs] + [v for pts in by_stage.values() for _, v in pts]
        log_y = log_axis(log_y, every)

        def y(v: float) -> float:
            return math.log10(v) if log_y else v

        for i, (stage, pts) in enumerate(sorted(by_stage.items())):
            plt.plot([x for x, _ in pts], [y(v) for _, v in pts],
                     label=f"stage {stage}" if len(by_stage) > 1 else None, marker="braille",
                     color=HARD if i == 0 else BARS[i % len(BARS)])
        shown_x = sorted({x for pts in by_stage.values() for x, _ in pts})
        if shown_x and self.axis.field is None:
            step = max(1, len(shown_x) // 12)
            self.set_xticks(plt, shown_x[::step], [str(int(x)) for x in shown_x[::step]])
        elif shown_x:
            self.set_xticks(plt, *axis_ticks(shown_x[0], shown_x[-1], self.axis))
        for stage, ref in refs[-1:]:
            plt.hline(y(ref), BOUNDARY)
            if not by_stage:
                plt.scatter([1], [y(ref)], label=f"stage {stage} exit", color=BOUNDARY)
        if log_y and every:
            yt, yl = _log_ticks(every)
            plt.yticks(yt, yl)
        ref_txt = f" · ── mined {fmt.ppl(refs[-1][1])}" if refs else ""
        scale = " · log y" if log_y else ""
        long, short = axis_title(self.axis, x_axis_named(x_axis))
        plt.title(self.fitting_title(f"hard PPL{long}{ref_txt}{scale}",
                                     f"hard PPL{short}{ref_txt}{scale}",
                                     f"hard PPL{short}{scale}", f"hard PPL{scale}"))


class ConfidenceChart(Chart):
    """The histogram of exit confidences (ThresholdComputed) with the threshold line; on a
    log x-axis (`log_x`; by default where the confidences span more than 10x and the engine
    sent bins of equal width in log10). After a build: `log_x` (shown), `bins` (edges,
    counts) and `bin_kind` ("log", "zoom" or "full": which of the event's bins), for tests."""

    log_x = False
    bins: tuple = ([], [])
    bin_kind = ""

    def __init__(self, stage: Optional[int] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stage = stage  # None: the latest mining

    def event(self, view: RunView):
        stage = self.stage if self.stage is not None else view.last_mining_stage
        return view.threshold_computed.get(stage) if stage is not None else None

    def data_key(self, view: RunView, log_x: Optional[bool] = None, **_: Any) -> Any:
        th = self.event(view)
        return None if th is None else (th.stage, th.t, log_x)

    def log_shown(self, view: RunView, log_x: Optional[bool] = None) -> bool:
        """Whether the histogram is on a log axis: `log_x` (l pressed) where the bins can be,
        else by default (conf_log_default)."""
        th = self.event(view)
        if th is None:
            return False
        return conf_log_default(th) if log_x is None else log_x and can_log(th)

    def draw(self, plt, view: RunView, log_x: Optional[bool] = None, **_: Any) -> None:
        th = self.event(view)
        if th is None or not th.histogram_counts:
            self.empty(plt, "confidence histogram — after mining")
            return
        self.log_x = self.log_shown(view, log_x)
        self.bin_kind, edges, counts = histogram_bins(th, self.log_x)
        self.bins = (edges, counts)

        def x(v: float) -> float:
            return math.log10(v) if self.log_x else v

        # Bins as filled steps: plotext's bars fill each bar by a search quadratic in its
        # size (1.5 s for a weak model's tall first bin, the UI thread holding the GIL);
        # a line filled down to the axis costs a few ms. Below the threshold: hard tokens.
        for below, color in ((True, HARD), (False, TRAIN)):
            xs, ys = [], []
            for left, right, count in zip(edges, edges[1:], counts):
                if (left < th.threshold) == below:
                    xs += [x(left), x(right)]
                    ys += [count, count]
            if xs:
                plt.plot(xs, ys, color=color, marker="sd", fillx=True)
        plt.vline(x(th.threshold), THRESH)
        plt.xlim(x(edges[0]), x(edges[-1]))
        self.set_xticks(plt, *self._x_ticks(th.threshold, edges))
        top = max(counts) if counts else 0
        if top > 0:
            ticks = _round_values_between(max(1.0, top / 4), top, max_ticks=3)
            plt.yticks([0, *ticks], ["0", *(fmt.tick(t) for t in ticks)])
        tokens = f"{fmt.integer(th.tokens)} tokens"
        scale = (" · log x" if self.bin_kind == "log" else " · log x, equal bins") \
            if self.log_x else ""
        plt.title(self.fitting_title(f"confidence at layer {th.exit_layer} · {tokens}{scale}",
                                     f"confidence · layer {th.exit_layer}{scale}",
                                     f"confidence{scale}", "confidence"))

    def _x_ticks(self, threshold: float, edges: list[float]) -> tuple[list, list]:
        """The range's ends and the threshold; on a log axis also the powers of ten between,
        where they leave room for those labels."""
        marks = [(edges[0], _conf_tick(edges[0])), (threshold, f"thr {threshold:.4g}"),
                 (edges[-1], _conf_tick(edges[-1]))]
        if not self.log_x:
            return [m for m, _ in marks], [label for _, label in marks]
        low, high = math.log10(edges[0]), math.log10(edges[-1])
        room = 0.12 * (high - low)
        for k in range(math.ceil(low), math.floor(high) + 1):
            if all(abs(k - math.log10(m)) > room for m, _ in marks):
                marks.append((10.0 ** k, _conf_tick(10.0 ** k)))
        marks.sort()
        return [math.log10(m) for m, _ in marks], [label for _, label in marks]


def can_log(th) -> bool:
    """Whether the histogram can be drawn on a log axis: its bins start above 0."""
    _, edges, counts = histogram_bins(th, True)
    return bool(counts) and edges[0] > 0


def conf_log_default(th) -> bool:
    """A log axis by default where the engine sent log-spaced bins (older logs: linear) and
    the confidences span more than 10x."""
    return bool(th.log_edges and th.log_counts) and th.log_edges[-1] > 10 * th.log_edges[0] > 0


def confidence_bins(th) -> tuple[list[float], list[int]]:
    """The bins the engine fitted to the confidences (`zoom_*`), else (an event log from
    before them) the bins on [0, 1]."""
    if th.zoom_edges and th.zoom_counts:
        return th.zoom_edges, th.zoom_counts
    return th.histogram_edges, th.histogram_counts


def histogram_bins(th, log_x: bool = False) -> tuple[str, list[float], list[int]]:
    """Which of the event's bins to draw ("log", "zoom" or "full"), and they: on a log axis
    those of equal width in log10 where the engine sent them, else `confidence_bins`. Equal
    bins on a log axis are drawn each over its own range (never split or merged: the app
    has no confidences to bin again)."""
    if log_x and th.log_edges and th.log_counts:
        return "log", th.log_edges, th.log_counts
    edges, counts = confidence_bins(th)
    return ("zoom" if edges is th.zoom_edges else "full"), edges, counts


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
        names = Text()
        for i, (_, name, _) in enumerate(CHARTS):
            if i:
                names.append(" │ ", style="dim")
            names.append(f" {name} ", style="bold reverse" if i == index else "dim")
        chosen = Text(f" {CHARTS[index][1]} ", style="bold reverse")
        chosen.append(f" {index + 1}/{len(CHARTS)}", style="dim")
        hint = "dim italic"
        for shown, keys in ((names, "   n: next chart · l: log · x: x-axis"),
                            (names, "  n next · l log · x axis"),
                            (chosen, " · n next · l log · x axis"), (chosen, " · keys n l x")):
            text = shown.copy()
            text.append(keys, style=hint)
            if not width or len(text) <= width:
                break
        return text


class Charts(Vertical):
    """The dashboard's charts, one shared choice each: the PPL charts' x-axis (x cycles) and
    whether their axes are log (l: the PPL charts' y, the confidence histogram's x)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.selected = 0
        self.log_y: Optional[bool] = None  # None: log where the values span > 10× (l sets)
        self.log_x: Optional[bool] = None  # the confidences': None, log where they span > 10×
        self.x_axis = EPOCH_AXIS.name

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
        """Log axes on the PPL charts (y) and the confidence histogram (x), or linear ones,
        whichever the shown chart (the PPL chart, or the histogram where it is the one
        selected) does not have now; whether they are log now."""
        confidence = self.query_one(ConfidenceChart)
        if CHARTS[self.selected][2] is ConfidenceChart:
            log = not confidence.log_shown(view, self.log_x)
        else:
            log = not log_axis(self.log_y, ppl_values(view))
        self.log_y = self.log_x = log
        self.show(view)
        return log

    def cycle_x_axis(self, view: RunView) -> XAxis:
        """The PPL charts against the next x-axis (epoch, tokens, time, MACs, epoch ...)."""
        self.x_axis = next_x_axis(self.x_axis)
        self.show(view)
        return x_axis_named(self.x_axis)

    def show(self, view: RunView) -> None:
        for chart in self.query(Chart):
            chart.show(view, log_y=self.log_y, log_x=self.log_x, x_axis=self.x_axis)


class CurvesChart(Chart):
    """The compared runs' validation PPL per epoch (ashem_engine.study_curves: a run's curve,
    or a study configuration's mean over seeds) against an x-axis. Against training MACs a
    study configuration's curve is its `curve["compute"]` where given
    (ashem_engine.compare.study_compute_bands): each seed's best so far, the geometric mean
    over seeds, and its 95 % band on the NLL drawn dotted (cut at BAND_REACH times the highest
    mean, and on a log axis at the lowest mean over it). `show(curves, x_axis=..., log_y=...)`:
    the engine's curve dicts stand where the other charts take a view. After a build: `axis`
    (shown), `series` {name: [(x, ppl)]}, `bands` {name: [(x, low, high)]} and `cut` (band
    points cut), for tests."""

    DEFAULT_CSS = "CurvesChart { min-height: 10; }"
    axis: XAxis = EPOCH_AXIS
    series: dict = {}
    bands: dict = {}
    cut = 0
    best_so_far = False  # a curve drawn from the engine's band (against training MACs)

    def data_key(self, curves: list, x_axis: str = "macs",  # type: ignore[override]
                 log_y: Optional[bool] = None, **_: Any) -> Any:
        return (curves, x_axis, log_y)

    def draw(self, plt, curves: list, x_axis: str = "macs",  # type: ignore[override]
             log_y: Optional[bool] = None, **_: Any) -> None:
        from .pareto import style  # (pareto imports this module)

        curves = [c for c in curves if c.get("points")]
        self.series, self.bands, self.cut, self.best_so_far = {}, {}, 0, False
        if not curves:
            self.empty(plt, "validation PPL — no epochs logged")
            return
        wanted = x_axis_named(x_axis)
        every = [p for c in curves for p in c["points"]]
        self.axis = wanted if axis_values(every, wanted) is not None else EPOCH_AXIS
        for c in curves:
            if self.axis.name == "macs" and c.get("compute"):
                self.series[c["name"]], self.bands[c["name"]] = compute_band(c["compute"])
                self.best_so_far = True
                continue
            xs = axis_values(c["points"], self.axis) or list(range(1, len(c["points"]) + 1))
            self.series[c["name"]] = [(x, p["val_ppl"]) for x, p in zip(xs, c["points"])
                                      if _ok(p.get("val_ppl"))]
            self.bands[c["name"]] = []  # the per-epoch means' t interval on PPL: not drawn
        values = curve_values(curves)
        log_y = log_axis(log_y, values)
        means = [v for pts in self.series.values() for _, v in pts]
        edges = (min(means) / BAND_REACH if log_y else 0.0, max(means) * BAND_REACH) \
            if means else (0.0, math.inf)
        for i, c in enumerate(curves):
            self._curve(plt, c, style(i)[0], log_y, edges)
        self._axes(plt, log_y, values, wanted)

    def _curve(self, plt, curve: dict, color, log_y: bool, edges: tuple) -> None:
        def y(v: float) -> float:
            return math.log10(v) if log_y else v

        name, points = curve["name"], self.series[curve["name"]]
        band = self.bands[curve["name"]]
        low, high = edges
        for edge in (1, 2):  # the band's low and high edges, under the mean
            shown = [(b[0], min(max(b[edge], low), high)) for b in band]
            self.cut += sum(not low <= b[edge] <= high for b in band)
            if shown:
                plt.plot([x for x, _ in shown], [y(v) for _, v in shown], marker="·",
                         color=color)
        seeds = f" · {curve['seeds']} seeds" if curve.get("seeds") else ""
        if points:
            plt.plot([x for x, _ in points], [y(v) for _, v in points], marker="braille",
                     color=color, label=f"{name}{seeds}")

    def _axes(self, plt, log_y: bool, values: list[float], wanted: XAxis) -> None:
        xs = [x for pts in self.series.values() for x, _ in pts]
        if xs and self.axis.field is None:
            last = int(max(xs))
            step = max(1, last // 12)
            ticks = list(range(1, last + 1, step))
            self.set_xticks(plt, ticks, [str(t) for t in ticks])
        elif xs:
            self.set_xticks(plt, *axis_ticks(min(xs), max(xs), self.axis))
        if log_y and values:
            plt.yticks(*_log_ticks(values))
        note = "" if self.axis is wanted else f" (no {wanted.label} in a log: per epoch)"
        plt.xlabel(f"{self.axis.label}{note}")
        head = f"validation PPL{axis_title(self.axis, self.axis)[0]}"
        log = " · log y" if log_y else ""
        band = ", dotted: 95 % band" if any(self.bands.values()) else ""
        how = f" · best so far, geometric mean of seeds{band}" if self.best_so_far else ""
        cut = " (cut at edges)" if self.cut else ""
        plt.title(self.fitting_title(head + how + cut + log, head + how + log, head + log,
                                     "validation PPL"))


def curve_values(curves: list) -> list[float]:
    """The val PPLs a curves chart plots (what its default y axis is chosen from)."""
    return [p["val_ppl"] for c in curves for p in c.get("points", []) if _ok(p.get("val_ppl"))]


BAND_REACH = 2.0  # a curves chart's bands: cut at this times the highest mean (log: lowest / it)


def compute_band(band: list[dict]) -> tuple[list, list]:
    """A configuration's curve against training MACs from the engine's band (its points as
    ashem_engine.study_curves.mean_curve_band gives them): the (x, mean PPL) where any seed
    reached x, and the (x, low, high) where the band has both edges."""
    series = [(p["training_macs"], p["ppl_mean"]) for p in band if _ok(p.get("ppl_mean"))]
    edges = [(p["training_macs"], p["ppl_lo"], p["ppl_hi"]) for p in band
             if _ok(p.get("ppl_lo")) and _ok(p.get("ppl_hi"))]
    return series, edges
