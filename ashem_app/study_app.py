"""The app of `ashem --study STUDY_DIR`: the study view alone (screens/study.py).

o on the running run ends this app with `attach_to` set to that run's directory: the command
line (__main__) then attaches a dashboard to it, and opens the study view again when that
dashboard detaches (q). q here quits; the study goes on in its own process."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Union

from textual.app import App
from textual.screen import Screen

from . import keys
from .screens.help import HelpScreen
from .screens.study import StudyScreen


class StudyApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "ashem · study"
    BINDINGS = [keys.by_id("ashem.help").binding()]

    def __init__(self, directory: Union[str, Path], clock: Callable[[], float] = time.time,
                 interval: float = 1.0) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.clock = clock
        self.interval = interval
        self.attach_to: Optional[Path] = None  # the run to open when this app has ended

    def get_default_screen(self) -> Screen:
        return StudyScreen(self.directory, self.clock, self.interval)

    def on_study_screen_open_run(self, message: StudyScreen.OpenRun) -> None:
        self.attach_to = message.run_dir
        self.exit(0)

    def action_show_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())
