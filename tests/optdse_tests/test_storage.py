"""Opening a study's storage: which errors count as a lost connection, that a storage call
waits for the connection to come back and no longer, and that storages opened at once on a
new SQLite file all open (test_workers.py does the same for PostgreSQL, and restarts a real
PostgreSQL server under a running worker)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from optdse import storage
from optdse.storage import PatientRDBStorage, connection_lost, open_storage, shown_url
from tests.postgres import PostgresServer


def test_only_a_lost_connection_counts_as_an_outage() -> None:
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    bad = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert connection_lost(lost) and not connection_lost(bad)
    for cause, expected in ((lost, True), (bad, False)):
        try:
            raise optuna.exceptions.StorageInternalError("commit failed") from cause
        except optuna.exceptions.StorageInternalError as wrapped:
            assert connection_lost(wrapped) == expected
    assert not connection_lost(ValueError("not a database error"))


def test_every_storage_call_is_patient_but_opening_is_not(tmp_path: Path) -> None:
    opened = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_s=1)
    assert isinstance(opened, PatientRDBStorage)
    for name in ("create_new_trial", "set_trial_state_values", "set_trial_user_attr", "get_all_trials",
                 "record_heartbeat", "_get_stale_trial_ids"):
        assert hasattr(getattr(PatientRDBStorage, name), "__wrapped__"), name
    assert not hasattr(PatientRDBStorage.__init__, "__wrapped__")
    assert open_storage("journal.log") == "journal.log"  # not an RDB URL: Optuna's to open
    assert shown_url("postgresql+psycopg://optdse:s3cret@db/optdse") == "postgresql+psycopg://optdse:***@db/optdse"


def test_a_call_waits_for_the_connection_to_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A storage call that loses its connection twice, then succeeds, returns its result."""
    failures = iter([sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))] * 2)

    def flaky(value: int) -> int:
        error = next(failures, None)
        if error is not None:
            raise optuna.exceptions.StorageInternalError("lost") from error
        return value * 2

    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)  # the pauses, not the behaviour
    assert storage._patient(flaky)(21) == 42


def test_a_statement_that_fails_is_not_tried_again() -> None:
    calls = []

    def wrong() -> None:
        calls.append(1)
        raise optuna.exceptions.StorageInternalError("bad") from sqlalchemy.exc.IntegrityError("INSERT", {}, None)

    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage._patient(wrong)()
    assert calls == [1]


def test_an_outage_longer_than_the_limit_gives_up() -> None:
    started = time.monotonic()

    def down() -> None:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        storage._patient(down, outage_s=1.0)()
    assert time.monotonic() - started < 5


def open_at_once(url: str, count: int = 6) -> list[BaseException]:
    """`count` threads open the storage at `url` at the same instant; the errors they met."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def open_one() -> None:
        start.wait()
        try:
            open_storage(url)
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_a_new_sqlite_file_opened_at_once_opens_for_all(tmp_path: Path) -> None:
    assert open_at_once(f"sqlite:///{tmp_path / 'study.db'}") == []


@pytest.mark.slow
def test_an_empty_postgresql_database_opened_at_once_opens_for_all(postgres: PostgresServer) -> None:
    """What two `optdse worker`s started together did (one died: IntegrityError on
    alembic_version), with the start lined up so that the race happens every time."""
    assert open_at_once(postgres.new_database()) == []


def _open_at(opener: str, url: str, start: float) -> str:
    """Open `url` at `start` (a time.time()), by optdse or by plain Optuna (no schema lock):
    the error's type, or "" if it opened."""
    while time.time() < start:
        pass
    try:
        open_storage(url) if opener == "optdse" else optuna.storages.RDBStorage(url)
    except Exception as error:  # noqa: BLE001  # whatever it is, the test reports it
        return f"{type(error).__name__}: {str(error)[:120]}"
    return ""


def test_opening_rides_out_a_process_outside_the_lock_making_the_same_schema(tmp_path: Path) -> None:
    """An optuna-dashboard or an `optuna.load_study` in a script takes no schema lock. Opened
    at the same moment as optdse on a new SQLite file, it made the tables first in 7 of 20
    races, and optdse's opening failed (IntegrityError on alembic_version, or `table studies
    already exists`); fresh CI lost a grid test to it. Opening is now tried again."""
    with multiprocessing.get_context("fork").Pool(2) as pool:
        failed = []
        for race in range(15):
            url, start = f"sqlite:///{tmp_path / f'race{race}.db'}", time.time() + 0.1
            outside = pool.apply_async(_open_at, ("optuna", url, start))
            ours = pool.apply_async(_open_at, ("optdse", url, start))
            outside.get(30)
            failed += [error for error in [ours.get(30)] if error]
    assert failed == []
