"""Opening a study's storage: Optuna's RDB storage with a heartbeat, created once however many
workers start together.

Optuna's RDBStorage creates its tables and version rows when it opens an empty database. Two
`optdse worker` processes started at the same moment on an empty PostgreSQL database both do
so, and one loses (IntegrityError, duplicate key on `alembic_version` or on a type PostgreSQL
makes for each table). So the storage is opened under the database's own lock: PostgreSQL's
session advisory lock, MySQL's GET_LOCK, held on a connection of its own until the tables
exist; whoever comes second finds them made. SQLite has no such lock and races the same way
(`table studies already exists`, four threads opening one new file): an flock on the
database's directory serialises it there. A process that is not optdse (optuna-dashboard,
`optuna.load_study` in a script) takes no lock: when it makes the tables at the same moment,
opening fails the same way and is tried again (in 20 such races, 7 opens failed before).

A worker also rides out a short database outage (a restart, a failover, a dropped link):
every call of the storage interface that fails because the connection is gone is tried
again, with growing pauses, for up to OUTAGE_S, then the error stands. A missed heartbeat is
sent late rather than never, so other workers do not take a live worker's trial for lost
unless the outage outlasts their grace period. A write whose commit was under way when the
connection dropped may be tried twice; for Optuna's storage that can mean one extra trial
(a duplicated create), never a lost one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from sqlalchemy.engine import make_url

from optdse.config import GRACE_HEARTBEATS, HEARTBEAT_S
from optdse.optuna_internals import HEARTBEAT_METHODS

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
#: The advisory lock's key (PostgreSQL) and name (MySQL): any constant all optdse processes share.
SCHEMA_LOCK_KEY = 0x6F707464_7365  # "optdse"
SCHEMA_LOCK_TIMEOUT_S = 120
#: How often opening is tried when a process outside the lock races it to make the schema.
SCHEMA_RACE_ATTEMPTS = 5
#: How long a storage call waits for a database that went away to come back.
OUTAGE_S = 120.0

log = logging.getLogger("optdse")

#: What opening a storage URL raises when the URL cannot be opened (measured): an unknown
#: scheme or a file name (SQLAlchemy's ArgumentError), a database that does not answer
#: (OperationalError), a driver that is not installed (ImportError), an SQLite file in a
#: directory that does not exist (OSError), and Optuna's wrapping of any of them.
OPEN_ERRORS: tuple[type[Exception], ...] = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
                                            ImportError, OSError)


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S) -> str | BaseStorage:
    """The storage behind `url`: an RDB URL (SQLite, PostgreSQL, MySQL) gets Optuna's
    heartbeat, so the trials of a worker that dies are found by the others; other URLs are
    Optuna's to open (no heartbeat: only this host's dead runs are detected)."""
    if _scheme(url) not in RDB_SCHEMES:
        return url
    with _schema_lock(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        for attempt in range(SCHEMA_RACE_ATTEMPTS):
            try:
                return PatientRDBStorage(url, heartbeat_interval=heartbeat_s,
                                         grace_period=GRACE_HEARTBEATS * heartbeat_s,
                                         engine_kwargs={"pool_pre_ping": True})
            except sqlalchemy.exc.SQLAlchemyError as error:
                if not _schema_race(error) or attempt + 1 == SCHEMA_RACE_ATTEMPTS:
                    raise
                time.sleep(0.2 * (attempt + 1))  # the other opener is finishing the schema
    raise AssertionError("unreachable")  # the loop returns or raises


def _schema_race(error: sqlalchemy.exc.SQLAlchemyError) -> bool:
    """Whether opening failed because a process outside optdse's schema lock (an
    optuna-dashboard, a script with `optuna.load_study`) created the same tables at the same
    moment: their second creator sees the tables or the version row already there. Opening
    again then finds the schema made."""
    return isinstance(error, sqlalchemy.exc.IntegrityError) or (
        isinstance(error, sqlalchemy.exc.OperationalError | sqlalchemy.exc.ProgrammingError)
        and "already exists" in str(error))


def connection_lost(error: BaseException) -> bool:
    """Whether `error` (or the SQLAlchemy error Optuna wrapped it around) means the database
    connection is gone, rather than a statement that failed."""
    cause = error if isinstance(error, sqlalchemy.exc.SQLAlchemyError) else error.__cause__
    return isinstance(cause, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) or bool(
        getattr(cause, "connection_invalidated", False))


Method = TypeVar("Method", bound=Callable[..., Any])


def _patient(method: Method, outage_s: float = OUTAGE_S) -> Method:
    """`method`, tried again while the database connection is lost, for up to `outage_s`."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        deadline, pause, warned = time.monotonic() + outage_s, 0.5, False
        while True:
            try:
                return method(*args, **kwargs)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as error:
                if not connection_lost(error) or time.monotonic() + pause > deadline:
                    raise
                if not warned:
                    log.warning("the study's database is unreachable (%s); trying again for up to %g s",
                                method.__name__, outage_s)
                    warned = True
                time.sleep(pause)
                pause = min(2 * pause, 5.0)

    return call  # type: ignore[return-value]


class PatientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose storage-interface calls wait out a database outage (see the
    module docstring). The calls are those BaseStorage and BaseHeartbeat declare and
    RDBStorage implements; opening the storage is not retried, so a wrong URL fails at once."""


for _name in sorted(set(vars(BaseStorage)) | HEARTBEAT_METHODS):
    if (not _name.startswith("__") and callable(vars(RDBStorage).get(_name))
            and (not _name.startswith("_") or _name in HEARTBEAT_METHODS)):
        setattr(PatientRDBStorage, _name, _patient(vars(RDBStorage)[_name]))


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Hold the database's own lock (PostgreSQL, MySQL), or for an SQLite file an flock on
    its directory (no lock file left behind), while the block runs."""
    scheme = _scheme(url)
    if scheme == "sqlite":
        database = make_url(url).database
        if not database or database == ":memory:":
            yield
            return
        fd = os.open(Path(database).resolve().parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
        return
    if scheme not in ("postgresql", "mysql"):
        yield
        return
    if scheme == "postgresql":
        take, release = "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
        key: int | str = SCHEMA_LOCK_KEY
    else:
        take, release = f"SELECT GET_LOCK(:key, {SCHEMA_LOCK_TIMEOUT_S})", "SELECT RELEASE_LOCK(:key)"
        key = f"optdse-{SCHEMA_LOCK_KEY}"
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            if scheme == "postgresql":  # an advisory lock waits as long as lock_timeout allows
                connection.execute(sqlalchemy.text(f"SET lock_timeout = '{SCHEMA_LOCK_TIMEOUT_S}s'"))
            got = connection.execute(sqlalchemy.text(take), {"key": key}).scalar()
            if scheme == "mysql" and got != 1:  # 0 after the timeout
                raise RuntimeError(f"another process held the storage's schema lock for {SCHEMA_LOCK_TIMEOUT_S} s")
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(release), {"key": key})
                connection.commit()
    finally:
        engine.dispose()


def shown_url(storage: str | BaseStorage) -> str:
    """A storage's URL as printed: without its password."""
    url = storage if isinstance(storage, str) else str(getattr(storage, "url", storage))
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not an SQLAlchemy URL (a journal file, say): nothing to hide
        return url


def default_storage() -> str:
    os.makedirs("results", exist_ok=True)
    return "sqlite:///results/optdse.db"
