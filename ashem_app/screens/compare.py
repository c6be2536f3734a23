"""The comparison screen: quality against honest compute cost, across runs.

Shows the dict `ashem_engine.compare.combine` returns (every figure and every Pareto flag
comes from there): the Pareto chart (PPL against MACs per token), a warning when the series
were reported on different splits, and a table with one row per point. A study's points are
means over seeds (the PPL a geometric mean, exp of the mean NLL): the chart draws their 95 %
intervals as error bars, of the PPL and of the MACs per token, and the table shows the PPL's
as "[low–high]" beside it (from the engine's `point["interval"]`: the PPL's is taken on the
NLL and shown back as PPL, so it is asymmetric and never below 0; the MMAC/tok's own
interval made the table too wide for 120 columns).
Without any sweep it says what is needed. z toggles the chart's y range between all points and near the Pareto
front (display scaling only, see `widgets.pareto`); it starts zoomed when the zoom hides
at least one point. esc / q close it (with `ashem --compare`, where it is the app's only
screen, they quit).

v switches to the curves view: the runs' validation PPL per epoch (`comparison["curves"]`,
from `ashem_engine.study_curves`; a study's configurations as the mean over seeds) against
training MACs, the compute-matched view, where a study's configuration is its seeds' best so
far with the 95 % band dotted (`curve["compute"]`, see `widgets.charts.CurvesChart`); x
cycles the x-axis (training MACs, epoch, tokens trained, wall time) and l the log y axis.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from .. import fmt, keys
from ..widgets.charts import CurvesChart, curve_values, log_axis, next_x_axis
from ..widgets.pareto import ParetoChart, hidden_by_zoom, style

PARETO_MARK = "★"
COLUMNS = ("series", "quantile", "PPL", "acc %", "deep %", "honest %", "spec %",
           "MMAC/tok", PARETO_MARK)

NOTHING = ("Nothing to compare yet. A comparison needs a threshold sweep: a finished run "
           "with evaluation.sweep_points > 0 (its SweepComputed event, or sweep.json in its "
           "run directory), or  ashem --compare RUN_DIR [RUN_DIR ...]")


NO_CURVES = ("No validation curves to show: they come from the runs' events.jsonl (their "
             "EpochEnded events), read with  ashem --compare RUN_DIR|STUDY_DIR ...  or from "
             "the run shown")


def has_points(comparison: dict) -> bool:
    return any(s.get("points") for s in comparison.get("series", []))


def summary(comparison: dict) -> Text:
    series = comparison.get("series", [])
    runs = list(dict.fromkeys(s.get("run", "?") for s in series))
    splits = "/".join(comparison.get("splits", [])) or fmt.DASH
    seeds = sorted({p["seeds"] for s in series for p in s.get("points", []) if "seeds" in p})
    what = "configuration" if seeds else "run"  # a study's series are over seeds
    text = Text(f"{len(series)} series · {len(runs)} {what}{'s' * (len(runs) != 1)} · "
                f"{splits} · ", style="bold")
    text.append(f"{PARETO_MARK} Pareto-optimal · honest/spec: % of plain deepest model",
                style="dim")
    if seeds:
        count = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        text.append(f" · means over {count} seeds (PPL: geometric), [ ] and bars: 95 % "
                    "interval", style="dim")
    return text


def curves_summary(comparison: dict) -> Text:
    curves = comparison.get("curves", [])
    what = "configuration" if any(c.get("seeds") for c in curves) else "run"
    text = Text(f"{len(curves)} {what}{'s' * (len(curves) != 1)} · validation PPL per epoch · ",
                style="bold")
    text.append("x: x-axis · l: log y · v: the sweeps", style="dim")
    return text


def split_warning(comparison: dict) -> Optional[Text]:
    if not comparison.get("mixed_splits"):
        return None
    per_run = dict.fromkeys(f"{s.get('run', '?')}: {s.get('split', '?')}"
                            for s in comparison.get("series", []))
    return Text(f"⚠ The series were reported on different splits ({'; '.join(per_run)}): "
                "their PPLs do not compare directly.", style="bold yellow")


def _quantile(q: Any) -> str:
    return f"{q:.2f}" if isinstance(q, (int, float)) else fmt.DASH


def _mmacs(macs: Any) -> str:
    """MACs per token in millions, 4 significant digits (tiny test models have 0.01)."""
    if not isinstance(macs, (int, float)):
        return fmt.DASH
    m = macs / 1e6
    return f"{m:,.0f}" if abs(m) >= 1000 else f"{m:#.4g}".rstrip(".")


def ppl_cell(point: dict) -> str:
    """The PPL, and across seeds its 95 % interval as the engine gave it (on the NLL, shown
    back as PPL): "1,234.5 [1,100.2–1,380.9]"; one seed, or a run: the PPL alone."""
    nll = (point.get("interval") or {}).get("nll") or {}
    low, high = nll.get("ppl_lo"), nll.get("ppl_hi")
    if low is None or high is None:
        return fmt.ppl(point.get("ppl"))
    return f"{_short(point.get('ppl'))} [{_short(low)}–{_short(high)}]"


def _short(x: Any) -> str:
    """One decimal, or 3 significant digits in e-notation for a bound far out (2 seeds that
    disagree give [2.66e-09–3.58e+16]: shown, not hidden)."""
    if isinstance(x, (int, float)) and math.isfinite(x) and x > 0 and not 0.1 <= x < 1e7:
        return f"{x:.2e}"
    return fmt.num(x, 1)


def table_rows(comparison: dict) -> list[list[Text]]:
    """One row per point, in series order; the series' marker in its colour first."""
    rows = []
    for i, s in enumerate(comparison.get("series", [])):
        color, marker = style(i)
        for p in s.get("points", []):
            pareto = bool(p.get("pareto"))
            cells = [_quantile(p.get("quantile")),
                     ppl_cell(p),
                     fmt.pct(p.get("accuracy"), 2, sign=False),
                     fmt.pct(p.get("deep_ratio"), sign=False),
                     fmt.pct(p.get("honest_cost"), sign=False),
                     fmt.pct(p.get("spec_cost"), sign=False),
                     _mmacs(p.get("macs_per_token")), PARETO_MARK if pareto else ""]
            cell_style = "bold green" if pareto else ""
            label = Text(f"{marker} ", style=f"rgb{color}")
            label.append(str(s.get("label", "?")), style=cell_style)
            rows.append([label, *(Text(c, style=cell_style, justify="right")
                                  for c in cells)])
    return rows


class ComparisonScreen(Screen[None]):
    BINDINGS = keys.bindings("compare")

    def __init__(self, comparison: dict) -> None:
        super().__init__(classes="compare")
        self.comparison = comparison
        self.zoom_choice: Optional[bool] = None  # None: the default, until z is pressed
        self.curves_shown = False  # v: the validation curves instead of the sweeps
        self.x_axis = "macs"  # the curves': training MACs, the compute-matched view
        self.log_y: Optional[bool] = None  # the curves': None, log where they span > 10×

    @property
    def zoomed(self) -> bool:
        """The chart's y range near the Pareto front: by default when that hides a point."""
        if self.zoom_choice is not None:
            return self.zoom_choice
        return hidden_by_zoom(self.comparison) > 0

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-box") as box:
            box.border_title = " Comparison · PPL against honest compute cost "
            yield Static(id="compare-summary")
            yield Static(id="compare-warning")
            yield Static(NOTHING, id="compare-empty")
            yield ParetoChart(id="compare-chart")
            yield CurvesChart(id="compare-curves")
            yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for name in COLUMNS:
            table.add_column(name, key=name)
        self.show_comparison(self.comparison)

    def show_comparison(self, comparison: dict) -> None:
        """Show another comparison (a new sweep of the run arrived)."""
        self.comparison = comparison
        shown = has_points(comparison) and not self.curves_shown
        warning = split_warning(comparison) if not self.curves_shown else None
        self.query_one("#compare-box").border_title = (
            " Comparison · validation PPL against compute " if self.curves_shown else
            " Comparison · PPL against honest compute cost ")
        self.query_one("#compare-warning", Static).update(warning or "")
        self.query_one("#compare-warning").display = warning is not None
        chart = self.query_one(ParetoChart)
        chart.display = shown
        chart.show(comparison, zoomed=self.zoomed)
        table = self.query_one(DataTable)
        table.display = shown
        table.clear()
        for n, row in enumerate(table_rows(comparison)):
            table.add_row(*row, key=str(n))
        if self.curves_shown:
            self._show_curves()
        else:
            self.query_one("#compare-summary", Static).update(summary(comparison))
            self.query_one("#compare-summary").display = shown
            self.query_one("#compare-empty", Static).update(NOTHING)
            self.query_one("#compare-empty").display = not shown
            self.query_one(CurvesChart).display = False

    def _show_curves(self) -> None:
        curves = self.comparison.get("curves", [])
        chart = self.query_one(CurvesChart)
        chart.display = bool(curves)
        chart.show(curves, x_axis=self.x_axis, log_y=self.log_y)
        self.query_one("#compare-summary", Static).update(
            curves_summary(self.comparison))
        self.query_one("#compare-summary").display = bool(curves)
        self.query_one("#compare-empty", Static).update(NO_CURVES)
        self.query_one("#compare-empty").display = not curves

    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action == "toggle_zoom":
            return not self.curves_shown
        if action in ("cycle_x_axis", "toggle_log_y"):
            return self.curves_shown
        return True

    def action_toggle_zoom(self) -> None:
        self.zoom_choice = not self.zoomed
        self.query_one(ParetoChart).show(self.comparison, zoomed=self.zoomed)

    def action_toggle_view(self) -> None:
        self.curves_shown = not self.curves_shown
        self.show_comparison(self.comparison)
        self.refresh_bindings()

    def action_cycle_x_axis(self) -> None:
        self.x_axis = next_x_axis(self.x_axis)
        self._show_curves()

    def action_toggle_log_y(self) -> None:
        self.log_y = not log_axis(self.log_y, curve_values(self.comparison.get("curves", [])))
        self._show_curves()

    def action_close(self) -> None:
        if self.app.screen_stack[0] is self:  # `ashem --compare`: the app's only screen
            self.app.exit(0)
        else:
            self.dismiss(None)
