"""What the user watches while a study runs: a progress bar over trials and the current
Pareto front, redrawn after every trial (rich), plus one log line per trial."""

from __future__ import annotations

from types import TracebackType

import optuna
from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from optdse.export import pareto_frame
from optdse.spec import Study
from optdse.study import FINISHED, TrialOutcome


class StudyProgress:
    def __init__(self, console: Console, optuna_study: optuna.Study, study: Study, target: int) -> None:
        self.console = console
        self.optuna_study = optuna_study
        name = optuna_study.study_name  # NAME, or NAME-grid for the grid baseline
        self.progress = Progress(TextColumn(f"[bold]{name}[/] trials"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
        done = len(optuna_study.get_trials(deepcopy=False, states=FINISHED))
        self.task = self.progress.add_task("trials", total=target, completed=min(done, target))
        if done:
            console.print(f"resuming {name}: {done} of {target} trials already finished")
        self.live = Live(self._render(), console=console, refresh_per_second=2, transient=True)

    @staticmethod
    def pareto_table(optuna_study: optuna.Study, limit: int = 10) -> Table:
        frame = pareto_frame(optuna_study)
        table = Table(title=f"Pareto front ({len(frame)} trials)", title_justify="left")
        columns = [c for c in ("threads", "file_size", "replicas", "cpus", "memory_mb", "delay_ms", "jitter_ms",
                               "loss_pct", "art_ms", "acu_cores") if c in frame.columns]
        table.add_column("trial", justify="right")
        for column in columns:
            table.add_column(column, justify="right")
        for row in frame.head(limit).to_dict("records"):
            table.add_row(str(row["trial"]), *(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c])
                                               for c in columns))
        return table

    def _render(self) -> Group:
        return Group(self.progress, self.pareto_table(self.optuna_study))

    def trial_done(self, outcome: TrialOutcome) -> None:
        attrs = self.optuna_study.trials[outcome.number].user_attrs
        mark = "[green]ok[/]" if outcome.state == TrialState.COMPLETE else "[red]FAIL[/]"
        self.console.print(f"trial {outcome.number:>3} {mark} {attrs.get('config', '')} -> {outcome.summary}")
        for warning in attrs.get("warnings", []):
            self.console.print(f"          [yellow]warning:[/] {warning}")
        self.progress.advance(self.task)
        self.live.update(self._render())

    def __enter__(self) -> StudyProgress:
        self.live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.live.__exit__(kind, error, traceback)
