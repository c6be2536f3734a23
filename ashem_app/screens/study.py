"""The study view (`ashem --study STUDY_DIR`): a study followed while it runs.

Shows `ashem_engine.study_progress`'s StudyProgress (every figure comes from there): the
study's state, its runs finished, elapsed time and estimate of the time left; the grid of
configurations (rows) × seeds (columns), each cell its run's state; and the table of each
figure's mean ± the half-width of its 95 % interval over the finished seeds, with the paired
differences between configurations. The directory is read again every `interval` seconds in a
thread. o (or enter) asks the app to open the running run's dashboard, attached (OpenRun).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from ashem_engine.rundir import EVENTS_FILE
from ashem_engine.study import StudyError
from ashem_engine.study_progress import RunProgress, StudyFollower, StudyProgress
from ashem_engine.study_table import number, shown

from .. import fmt, keys

EMPTY_TABLE = ("No run has finished yet: each figure's mean ± 95 % interval over the "
               "finished seeds appears here as runs finish.")
STATE_STYLES = {"running": "bold yellow", "finished": "bold green", "stopped": "bold magenta",
                "failed": "bold red"}
CELL_STYLES = {"finished": "green", "running": "bold yellow", "starting": "yellow",
               "waiting": "dim", "failed": "bold red", "cancelled": "magenta",
               "interrupted": "magenta"}


def cell_text(run: RunProgress) -> str:
    """A grid cell: ✓ and the final PPL, ▶ and where the run is, · waiting, ✗ failed."""
    if run.state == "finished":
        return "✓" if run.ppl is None else f"✓ {number(run.ppl)}"
    if run.state in ("running", "interrupted"):
        mark = "▶" if run.state == "running" else "‖"
        return f"{mark} {where(run)}"
    return {"starting": "▷ next", "waiting": "·", "failed": "✗ failed",
            "cancelled": "■ cancelled"}[run.state]


def where(run: RunProgress) -> str:
    """Where a running run is, short: s2 e3/10, s1 mine, eval."""
    if run.phase == "evaluating":
        return "eval"
    if run.stage is None:
        return "start"
    if run.phase == "between stages":
        return f"s{run.stage} mine"
    epoch = "" if run.epoch is None else f" e{run.epoch}"
    if run.epoch is not None and run.max_epochs is not None:
        epoch += f"/{run.max_epochs}"
    return f"s{run.stage}{epoch}"


def where_in_words(run: RunProgress) -> str:
    if run.phase == "evaluating":
        return "the final evaluation and sweep"
    if run.stage is None:
        return "starting"
    stage = f"stage {run.stage}" + (f" of {run.stages}" if run.stages else "")
    if run.phase == "between stages":
        return f"{stage} ended, mining for the next"
    if run.epoch is None:
        return stage
    of = f" of {run.max_epochs}" if run.max_epochs is not None else ""
    return f"{stage}, epoch {run.epoch}{of}"


def seed_headers(progress: StudyProgress) -> list[str]:
    """The seed of each column, or seed+k where the configurations' seeds differ."""
    headers = []
    for index in range(progress.seeds):
        seeds = {progress.cell(c, index).seed for c in progress.configurations}
        headers.append(f"seed {seeds.pop()}" if len(seeds) == 1 else f"seed+{index}")
    return headers


def grid(progress: StudyProgress) -> Table:
    table = Table(box=None, padding=(0, 2, 0, 0), show_edge=False, header_style="bold")
    table.add_column("configuration", no_wrap=True, overflow="ellipsis", max_width=24)
    for header in seed_headers(progress):
        table.add_column(header, no_wrap=True)
    for config in progress.configurations:
        cells = [progress.cell(config, index) for index in range(progress.seeds)]
        table.add_row(config, *(Text(cell_text(c), style=CELL_STYLES[c.state])
                                for c in cells))
    return table


def headline(progress: StudyProgress) -> Text:
    text = Text(f"● {progress.state}", style=STATE_STYLES.get(progress.state, "bold"))
    text.append(f" · {progress.finished} of {progress.total} runs finished · elapsed "
                f"{fmt.duration(progress.elapsed_s)}")
    if progress.state != "finished":
        left = "no estimate yet" if progress.left_s is None else \
            f"about {fmt.duration(progress.left_s)} left"
        text.append(f" · {left}", style="dim" if progress.left_s is None else "")
    return text


def detail(progress: StudyProgress) -> Text:
    """The line under the headline: the running run, the failure, or how to go on."""
    run = progress.running
    if run is not None:
        text = Text(f"▶ {run.config} seed {run.seed}: {where_in_words(run)} · "
                    f"{fmt.duration(run.seconds)}", style="yellow")
        text.append(" · o opens its dashboard", style="dim")
        return text
    if progress.failed:
        failed = progress.failed[0]
        return Text(f"✗ {failed.config} seed {failed.seed} failed: {failed.error}",
                    style="red")
    if progress.state == "stopped":
        return Text(f"Go on with: ashem-engine study --resume {progress.directory}",
                    style="dim")
    starting = next((r for r in progress.runs if r.state == "starting"), None)
    if starting is not None:
        return Text(f"▷ starting {starting.config} seed {starting.seed}", style="yellow")
    return Text("")


def figure_cell(figure: Optional[dict], name: str, runs: int) -> str:
    """mean ± half-width of the 95 % interval; (n=k) where fewer runs have the figure."""
    if figure is None:
        return fmt.DASH
    text = shown(name, figure["mean"])
    if figure.get("half_width") is not None:
        text += f" ± {shown(name, figure['half_width'])}"
    return text if figure["n"] == runs else f"{text} (n={figure['n']})"


def table_columns(progress: StudyProgress) -> list[str]:
    return ["figure", *(f"{c} (n={progress.finished_by_config.get(c, 0)})"
                        for c in progress.configurations)]


def table_rows(progress: StudyProgress) -> list[list[str]]:
    """One row per figure, a column per configuration; then the paired differences."""
    table = progress.table
    if not table:
        return []
    configs = {c["name"]: c for c in table["configurations"]}
    names = progress.configurations
    rows = [[name, *(figure_cell((configs.get(c) or {}).get("figures", {}).get(name), name,
                                 progress.finished_by_config.get(c, 0)) for c in names)]
            for name in table["figures"]]
    for d in table.get("differences") or []:
        cells = [figure_cell(d, d["figure"], d["n"]) if c == d["configuration"] else ""
                 for c in names]
        rows.append([f"Δ {d['figure']} − {d['against']}", *cells])
    return rows


class StudyScreen(Screen[None]):
    BINDINGS = keys.bindings("study")
    DEFAULT_CSS = """
    #study-box { height: 1fr; border: thick $primary; border-title-style: bold;
                 background: $surface; padding: 0 1; }
    #study-headline, #study-detail { height: auto; }
    #study-grid { height: auto; margin: 1 0; }
    #study-table-title { height: auto; text-style: bold; }
    #study-empty { height: auto; color: $text-muted; }
    #study-table { height: 1fr; }
    """

    @dataclass
    class OpenRun(Message):
        """The user asks for the running run's dashboard."""
        run_dir: Path

    def __init__(self, directory: Union[str, Path], clock: Callable[[], float] = time.time,
                 interval: float = 1.0) -> None:
        super().__init__(classes="study")
        self.follower = StudyFollower(directory, clock)
        self.interval = interval
        self.progress: Optional[StudyProgress] = None
        self._shown_table: Optional[tuple] = None
        self._reading = False

    def compose(self) -> ComposeResult:
        with Vertical(id="study-box") as box:
            box.border_title = f" Study · {self.follower.directory.resolve().name} "
            yield Static(id="study-headline")
            yield Static(id="study-detail")
            yield Static(id="study-grid")
            yield Static("Each figure: mean ± 95 % interval over the finished seeds",
                         id="study-table-title")
            yield Static(EMPTY_TABLE, id="study-empty")
            yield DataTable(id="study-table", cursor_type="row", zebra_stripes=True,
                            fixed_columns=1)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.read_now()
        self.set_interval(self.interval, self._tick, name="study-read")

    def read_now(self) -> None:
        """Read the directory on this thread and show it (on mount, and in tests)."""
        self.show(self._read())

    def _read(self) -> Union[StudyProgress, str]:
        try:
            return self.follower.read()
        except (StudyError, OSError) as err:
            return str(err)

    def _tick(self) -> None:
        if self._reading:  # the last read has not come back: one at a time
            return
        self._reading = True
        self.run_worker(self._read_in_thread, thread=True, group="study-read",
                        exit_on_error=False)

    def _read_in_thread(self) -> None:
        progress = self._read()
        try:
            self.app.call_from_thread(self._arrived, progress)
        except RuntimeError:  # the app has closed meanwhile
            pass

    def _arrived(self, progress: Union[StudyProgress, str]) -> None:
        self._reading = False
        self.show(progress)

    def show(self, progress: Union[StudyProgress, str]) -> None:
        if isinstance(progress, str):  # the directory cannot be read (any more)
            self.query_one("#study-detail", Static).update(Text(progress, style="bold red"))
            return
        self.progress = progress
        self.query_one("#study-headline", Static).update(headline(progress))
        self.query_one("#study-detail", Static).update(detail(progress))
        self.query_one("#study-grid", Static).update(grid(progress))
        self._show_table(progress)

    def _show_table(self, progress: StudyProgress) -> None:
        columns = table_columns(progress)
        if self._shown_table is not None and self._shown_table[0] is progress.table \
                and self._shown_table[1] == columns:  # unchanged: keep the scroll and cursor
            return
        self._shown_table = (progress.table, columns)
        self.query_one("#study-empty").display = not progress.table
        table = self.query_one("#study-table", DataTable)
        table.display = bool(progress.table)
        table.clear(columns=True)
        for k, column in enumerate(columns):
            table.add_column(Text(column, justify="left" if k == 0 else "right"))
        for row in table_rows(progress):
            table.add_row(*(Text(cell, justify="left" if k == 0 else "right")
                            for k, cell in enumerate(row)))

    def action_open_run(self) -> None:
        run = self.progress.running if self.progress is not None else None
        if run is None or run.run_dir is None:
            self.notify("No run of the study is running now.", severity="warning")
            return
        if not (run.run_dir / EVENTS_FILE).is_file():
            self.notify("The running run has not written its first event yet.",
                        severity="warning")
            return
        self.post_message(self.OpenRun(run.run_dir))

    def action_close_study(self) -> None:
        self.app.exit(0)
