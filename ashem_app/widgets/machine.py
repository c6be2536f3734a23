"""The machine the run uses, from its MachineSampled events (the engine's machine.py): cards
under the metric cards (CPU, resident memory and its peak, threads; the GPU's memory when
the run is on CUDA), and on a wide screen a panel beside the log with the same figures over
a chart of CPU % and resident memory against run time."""
from __future__ import annotations

import math
from typing import Any, Optional

from ashem_engine.events import MachineSampled
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from .. import fmt
from ..state import RunView
from . import set_text
from .cards import MetricCard
from .charts import TRAIN as CPU, VAL as RSS

MiB, GiB = 2 ** 20, 2 ** 30


def size(n: Optional[int]) -> str:
    """Bytes, short: 412 MiB, 12.3 GiB."""
    if n is None:
        return fmt.DASH
    return f"{n / MiB:,.0f} MiB" if n < GiB else f"{n / GiB:,.1f} GiB"


def with_peak(now: Optional[int], peak: Optional[int]) -> str:
    """A size and its peak: 417 MiB (peak 423), the unit said once where they share it."""
    a, b = size(now), size(peak)
    if a.split()[-1] == b.split()[-1]:
        b = b.split()[0]
    return f"{a} (peak {b})"


def machine_card(sample: Optional[MachineSampled], one_line: bool = False) -> tuple[str, str]:
    """The Machine card's value and sub line (one line: the threads go to the sub line)."""
    if sample is None:
        return fmt.DASH, "no sample yet"
    cpu, threads = f"{sample.cpu_percent:,.0f} % CPU", f"{sample.threads} thr"
    memory = with_peak(sample.rss_bytes, sample.peak_rss_bytes)
    return (cpu, f"{memory} · {threads}") if one_line else (f"{cpu} · {threads}", memory)


def gpu_card(device: dict) -> tuple[str, str]:
    """A CUDA device's card: allocated memory and its peak; utilisation, power, reserved."""
    value = with_peak(device.get("allocated_bytes"), device.get("peak_allocated_bytes"))
    parts = []
    if "utilization" in device:
        parts.append(f"{device['utilization']:.0f} %")
    if "power_w" in device:
        parts.append(f"{device['power_w']:.0f} W")
    parts.append(f"res {size(device.get('reserved_bytes'))}")
    return value, " · ".join(parts)


def rgb(color: tuple) -> str:
    return "rgb({},{},{})".format(*color)


def panel_lines(sample: Optional[MachineSampled]) -> Text:
    """The wide panel's figures, CPU and RSS in their lines' colours (the chart's legend):
    the process and the machine, then a line per GPU."""
    if sample is None:
        return Text("machine: no sample yet", style="dim")
    line = Text(f"CPU {sample.cpu_percent:,.0f} %", style=f"bold {rgb(CPU)}")
    line.append(" · ")
    line.append(f"RSS {size(sample.rss_bytes)}", style=f"bold {rgb(RSS)}")
    line.append(f" (peak {size(sample.peak_rss_bytes)}) · {sample.threads} threads")
    if sample.system_cpu_percent is not None:
        line.append(f" · machine {sample.system_cpu_percent:.0f} % CPU", style="dim")
    for device in sample.devices:
        value, sub = gpu_card(device)
        line.append(f"\nGPU {device.get('index', '')} ", style="bold")
        line.append(f"{value} · {sub}")
    line.no_wrap, line.overflow = True, "ellipsis"
    return line


class MachineCards(Grid):
    """The Machine card, and a GPU card for the run's device when it has one: one line each
    on a compact or short screen (the CSS), else boxes like the metric cards."""

    _view: Optional[RunView] = None

    def compose(self) -> ComposeResult:
        yield MetricCard("machine", "Machine", "Machine")
        yield MetricCard("gpu", "GPU memory", "GPU")

    def show(self, view: RunView) -> None:
        self._view = view
        one_line = self.screen.has_class("-compact") or self.screen.has_class("-short")
        sample = view.machine
        self.query_one("#card-machine", MetricCard).set_value(*machine_card(sample, one_line),
                                                              one_line)
        gpu = self.query_one("#card-gpu", MetricCard)
        devices = sample.devices if sample is not None else []
        gpu.display = bool(devices)
        if devices:
            gpu.set_value(*gpu_card(devices[0]), one_line)

    def on_resize(self) -> None:  # the screen's breakpoints may have changed the layout
        if self._view is not None:
            self.show(self._view)


class MachineChart(PlotextPlot):
    """CPU % (left axis) and resident memory in MiB (right axis) against the run clock; built
    again only when a sample came or the size changed. Not one of the dashboard's `Chart`s
    (those are the training's). After a build: `series` {"cpu": [(s, %)], "rss": [(s, MiB)]},
    for tests."""

    series: dict = {}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._view: Optional[RunView] = None
        self._built: tuple = (None, None)  # (key, what it rendered)

    def show(self, view: RunView) -> None:
        if self._view is None or self._key(view) != self._key(self._view):
            self._view = view
            self.refresh()

    @staticmethod
    def _key(view: RunView) -> Any:
        samples = view.machine_samples
        return (len(samples), samples[-1].t if samples else None, view.clock_offset)

    def render(self):
        key = (self._key(self._view) if self._view else None, self.size, self.app.theme)
        if self._built[0] != key:
            self.plt.clear_figure()
            self.draw(self.plt, self._view)
            self._built = (key, super().render())
        return self._built[1]

    def draw(self, plt, view: Optional[RunView]) -> None:
        samples = view.machine_samples if view is not None else ()
        if len(samples) < 2:
            self.series = {}
            plt.title("CPU and memory: after two samples")
            plt.xticks([], [])
            plt.yticks([], [])
            return
        xs = [view.clock_offset + s.t for s in samples]  # the run clock (RunView.clock)
        cpu = [s.cpu_percent for s in samples]
        rss = [s.rss_bytes / MiB for s in samples]
        self.series = {"cpu": list(zip(xs, cpu)), "rss": list(zip(xs, rss))}
        # no legend or title: the panel's line above names CPU and RSS in these colours
        plt.plot(xs, cpu, marker="braille", color=CPU)
        plt.plot(xs, rss, marker="braille", color=RSS, yside="right")
        cpu_top = 100.0 * math.ceil(max(cpu) / 100 or 1)  # whole cores
        plt.ylim(0, cpu_top, yside="left")  # from zero: the level, not the noise
        plt.yticks([0, cpu_top], ["0 %", f"{cpu_top:.0f} %"], yside="left")
        plt.ylim(0, max(rss), yside="right")
        plt.yticks([0, max(rss)], ["0", size(int(max(rss) * MiB))], yside="right")
        ticks = [xs[0], (xs[0] + xs[-1]) / 2, xs[-1]]  # the run clock's ends and middle
        plt.xticks(ticks, [fmt.duration(t) for t in ticks])


class MachinePanel(Vertical):
    """The wide screen's machine panel: the latest figures, and the chart under them."""

    def compose(self) -> ComposeResult:
        yield Static(id="machine-line")
        yield MachineChart(id="machine-chart")

    def show(self, view: RunView) -> None:
        set_text(self.query_one("#machine-line", Static), panel_lines(view.machine),
                 layout=True)  # (a GPU's line makes it taller)
        self.query_one(MachineChart).show(view)  # built only when drawn: on a wide screen
