"""One exit-code rule for both commands, `ashem` and `ashem-engine`."""
from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
# RunFailed.error_kind; "settings": a setting this machine cannot honour (run.compile)
BAD_INPUT_KINDS = ("data", "run_dir", "resume", "checkpoint", "settings")


def exit_code(status: str, error_kind: str | None = None) -> int:
    """0 finished, 1 failed while running, 2 bad input (command line, settings, data, run
    directory, checkpoint), 130 cancelled (Ctrl-C, or quit / abort in the dashboard)."""
    if status == "failed":
        return EXIT_BAD_INPUT if error_kind in BAD_INPUT_KINDS else EXIT_FAILED
    return EXIT_CANCELLED if status == "cancelled" else EXIT_OK
