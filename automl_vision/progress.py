"""Progress display: a live panel on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from automl_vision.settings import format_duration


class LogProgress:
    """One line per event, for logs, CI and pipes."""

    def __init__(self, stream=None, deadline: float | None = None, worker: str = ""):
        self.stream = stream or sys.stdout
        self.deadline = deadline
        self.prefix = f"[{worker}] " if worker else ""
        self.best: float | None = None
        self.best_trial: int | None = None
        self.planned: dict[int, int] = {}  # each trial's schedule as last shown, to say when it changes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _left(self) -> str:
        if self.deadline is None:
            return ""
        return f", {format_duration(max(0.0, self.deadline - time.time()))} left"

    def log(self, msg: str) -> None:
        print(f"{self.prefix}{msg}", file=self.stream, flush=True)

    def trial_start(self, number: int, label: str, epochs: int) -> None:
        self.planned[number] = epochs
        self.log(f"trial {number}: {label}, up to {epochs} epochs{self._left()}")

    def schedule_note(self, number: int, epochs: int) -> str:
        """`` (schedule 20 -> 7 epochs: time budget)`` the first time a trial's schedule changes."""
        before = self.planned.get(number, epochs)
        self.planned[number] = epochs
        if before == epochs:
            return ""
        return f" (schedule {'set' if epochs > before else 'cut'} from {before} to {epochs} epochs by the time budget)"

    def epoch(self, number: int, epoch: int, epochs: int, metric: str, value: float, seconds: float) -> None:
        note = self.schedule_note(number, epochs)
        self.log(f"trial {number} epoch {epoch}/{epochs}: val {metric} {value:.4f} ({seconds:.1f}s){note}")

    def trial_end(self, record: dict[str, Any], best: float | None, best_trial: int | None) -> None:
        self.best, self.best_trial = best, best_trial
        value = record.get("value")
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        reason = f" ({record['reason']})" if record.get("reason") else ""
        best_txt = f"; best so far {best:.4f} (trial {best_trial})" if best is not None else ""
        self.log(
            f"trial {record['number']} {record['state'].lower()}{reason}: {record.get('model', '')} "
            f"{shown} after {record.get('epochs', 0)} epochs, {record.get('seconds', 0):.0f}s{best_txt}{self._left()}"
        )


class RichProgress(LogProgress):
    """A live panel (current trial, epoch, best so far, time left) above the log lines."""

    def __init__(self, deadline: float | None = None, worker: str = "", n_trials: int | None = None):
        super().__init__(sys.stdout, deadline, worker)
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.n_trials = n_trials
        self.state = {"trial": "-", "epoch": "-", "last": "-"}
        # get_renderable: redrawn twice a second, so "time left" runs on through a long epoch
        self.live = Live(console=self.console, refresh_per_second=2, transient=True, get_renderable=self._render)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)
        return False

    def _render(self):
        from rich.table import Table

        t = Table.grid(padding=(0, 2))
        best = f"{self.best:.4f} (trial {self.best_trial})" if self.best is not None else "-"
        left = format_duration(max(0.0, self.deadline - time.time())) if self.deadline else "no limit"
        t.add_row("[bold]trial[/]", self.state["trial"], "[bold]epoch[/]", self.state["epoch"])
        t.add_row("[bold]best[/]", best, "[bold]time left[/]", left)
        t.add_row("[bold]last[/]", self.state["last"], "", "")
        return t

    def _update(self) -> None:
        self.live.refresh()

    def log(self, msg: str) -> None:
        self.console.print(f"{self.prefix}{msg}", highlight=False)

    def trial_start(self, number: int, label: str, epochs: int) -> None:
        self.planned[number] = epochs
        self.state.update(trial=f"{number}: {label}", epoch=f"0/{epochs}")
        self._update()

    def epoch(self, number: int, epoch: int, epochs: int, metric: str, value: float, seconds: float) -> None:
        note = self.schedule_note(number, epochs)
        if note:
            self.log(f"trial {number}:{note}")
        self.state["epoch"] = f"{epoch}/{epochs}  val {metric} {value:.4f}  ({seconds:.1f}s/epoch)"
        self._update()

    def trial_end(self, record: dict[str, Any], best: float | None, best_trial: int | None) -> None:
        super().trial_end(record, best, best_trial)
        value = record.get("value")
        self.state["last"] = f"trial {record['number']} {record['state'].lower()} " + (
            f"{value:.4f}" if isinstance(value, (int, float)) else ""
        )
        self._update()


def make_console():
    """A rich console; 120 columns wide when the output is not a terminal (logs, CI)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=120)


def make_progress(deadline: float | None, worker: str = "", n_trials: int | None = None, plain: bool | None = None):
    if plain is None:
        plain = not sys.stdout.isatty()
    if plain:
        return LogProgress(deadline=deadline, worker=worker)
    return RichProgress(deadline=deadline, worker=worker, n_trials=n_trials)
