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
from optdse.knobs import SHORT
from optdse.record import TrialRecord
from optdse.spec import ALL_PARAMETERS, Study
from optdse.study import TrialOutcome, trial_counts


def _cell(value: object) -> str:
    """3 significant digits, but whole numbers whole (1000 MB, not 1e+03); "-" for a
    parameter the trial did not have (a batching parameter with batching off)."""
    if isinstance(value, float) and value != value:
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e9 else f"{value:.3g}"
    return str(value)


class StudyProgress:
    def __init__(self, console: Console, optuna_study: optuna.Study, study: Study, target: int) -> None:
        self.console = console
        self.optuna_study = optuna_study
        name = optuna_study.study_name  # NAME, or NAME-grid for the grid baseline
        self.progress = Progress(TextColumn(f"[bold]{name}[/] trials"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.description}"),
                                 console=console)
        done, _ = trial_counts(optuna_study)
        self.target = target
        self._waiting_for = 0
        self.task = self.progress.add_task("", total=target, completed=min(done, target))
        if done:
            console.print(f"{name}: {done} of {target} trials already finished (by an earlier run or other workers)")
        self.live = Live(self._render(), console=console, refresh_per_second=2, transient=True)

    @staticmethod
    def pareto_table(optuna_study: optuna.Study, limit: int = 10) -> Table:
        frame = pareto_frame(optuna_study)
        parameters = [c for c in ALL_PARAMETERS if c in frame.columns]
        # A parameter with one value on the whole front is said once, in the title, so the
        # table fits a terminal (the network study has eight parameters).
        same = [c for c in parameters if len(frame) > 1 and frame[c].nunique(dropna=False) == 1]
        title = (f"Pareto front ({len(frame)} trials" + "".join(f"; {SHORT.get(c, c)} {_cell(frame[c].iloc[0])}"
                                                                 for c in same)
                 + (" throughout)" if same else ")"))
        table = Table(title=title, title_justify="left")
        figures = dict.fromkeys([*(optuna_study.metric_names or []), "art_ms", "acu_cores"])  # objectives first
        columns = [c for c in parameters if c not in same] + [c for c in figures if c in frame.columns]
        table.add_column("trial", justify="right")
        for column in columns:
            table.add_column(SHORT.get(column, column), justify="right")
        for row in frame.head(limit).to_dict("records"):
            table.add_row(str(row["trial"]), *(_cell(row[c]) for c in columns))
        if len(frame) > limit:  # say what is missing, and where it is
            table.caption = f"{limit} of {len(frame)} shown; `optdse export` has all"
            table.caption_justify = "left"
        return table

    def _render(self) -> Group:
        return Group(self.progress, self.pareto_table(self.optuna_study))

    def trial_done(self, outcome: TrialOutcome) -> None:
        record = TrialRecord.of(self.optuna_study.trials[outcome.number])
        mark = "[green]ok[/]" if outcome.state == TrialState.COMPLETE else "[red]FAIL[/]"
        retry = f" (retry of trial {record.retry_of})" if record.retry_of is not None else ""
        self.console.print(f"trial {outcome.number:>3} {mark} {record.config}{retry} -> {outcome.summary}")
        for warning in record.measurement.warnings if record.measurement else []:
            self.console.print(f"          [yellow]warning:[/] {warning}")
        self.progress.update(self.task, description="")

    def counted(self, finished: int) -> None:
        """Where the study stands (run_study counts before each trial): redraw the bar and the front."""
        self.progress.update(self.task, completed=min(finished, self.target))
        self.live.update(self._render())

    def waiting(self, running: int) -> None:
        """The missing trials are being measured by other workers: say so once, and show how
        far the study is."""
        if running != self._waiting_for:
            self._waiting_for = running
            self.console.print(f"waiting for {running} trial(s) of other workers: the study needs no more, "
                               "unless one of them is lost (it is then measured here)")
        self.progress.update(self.task, description=f"waiting for {running} trial(s) of other workers")

    def lost(self, numbers: list[int]) -> None:
        for number in numbers:
            record = TrialRecord.of(self.optuna_study.trials[number])
            again = "a retry already, not measured again" if record.retry_of is not None else "measured again"
            self.console.print(f"trial {number:>3} [red]lost[/]: {record.fail_message or ''}; marked FAIL "
                               f"(abandoned), {again}")

    def __enter__(self) -> StudyProgress:
        self.live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.live.__exit__(kind, error, traceback)
