"""Where a sweep's state lives: an Optuna study that any number of workers share.

A sweep is one Optuna study, named after the hash of its config (`study_name`:
the base config, the axes and every sweep field that changes which trials run
or how they are judged), in the storage `sweep.storage` names:

  * "" (the default): the journal file `DIR/optuna.journal`;
  * a path: a journal file there (`JournalFileBackend`: appends under a lock
    file, fine on NFS);
  * a database URL: `sqlite:///sweep.db`, `postgresql://user@host/db`
    (the installed driver: `driver_url`),
    `mysql+pymysql://...` (`RDBStorage`).

Every trial of the sweep is one Optuna trial with

  * params: its swept fields, named as dotted config fields (`optim.learning_rate`);
  * user attrs: `trial_id` (its folder `DIR/trials/<trial_id>/`), `overrides`
    (the swept fields exactly, e.g. tuples), then, once finished, the fields of
    its results.json (`status`, `test_accuracy`, `test_loss`, `params_sha256`,
    ...), `final_train_loss`, `steps_per_epoch`, `workdir` and `worker`;
  * intermediate values: the validation metric at each epoch end (step = epochs
    done);
  * value: the final validation metric (`objective`).

So `optuna.load_study(study_name=..., storage=...)` and optuna-dashboard show a
sweep with no code of ours. A sweep's `pretrain` stages are a second study,
`<name>.pretrain`, run the same way before the trials.

Workers share the study as a queue (`research.sweep.queue`); every Optuna call
goes through `research.sweep.study`. A database's password never leaves this
process's memory (`database_url`, `shown`).

On SQLite, every transaction starts with `BEGIN IMMEDIATE`: pysqlite otherwise
reads outside the transaction that writes, and two workers could both move the
same trial. (PostgreSQL and MySQL lock the row: `SELECT ... FOR UPDATE`.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

import ml_collections
from optuna.trial import FrozenTrial

from research import models
from research.platform import fcntl
from research.sweep import space
from research.sweep import study as optuna_api
from research.sweep.queue import (  # noqa: F401  (the queue's names, as before)
    FINISHED,
    LIVE,
    Heartbeats,
    Job,
    Queue,
    trial_key,
    worker_name,
    yielded,
)

log = logging.getLogger(__name__)

JOURNAL_NAME = "optuna.journal"  # the default storage: a journal file in the sweep folder


def storage_url(setting: str, workdir: str) -> str:
    """The storage `sweep.storage = setting` names, as a URL or a journal file path."""
    if not setting:
        return os.path.abspath(os.path.join(workdir, JOURNAL_NAME))
    if "://" in setting:
        return setting
    return os.path.abspath(setting)


def is_database(url: str) -> bool:
    return "://" in url


def shown(url: str) -> str:
    """`url` with any password replaced by ***, for logs, manifests and messages."""
    if not is_database(url):
        return url
    scheme, rest = url.split("://", 1)
    head, sep, query = rest.partition("?")
    if "@" in head:
        credentials, host = head.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        head = f"{user}{':***' if ':' in credentials else ''}@{host}"
    if query:
        fields = [p.split("=", 1) for p in query.split("&")]
        query = "&".join(
            f"{f[0]}=***" if len(f) == 2 and f[0].lower() in SECRET_PARAMS else "=".join(f)
            for f in fields
        )
    return f"{scheme}://{head}{sep}{query}"


SECRET_PARAMS = ("password", "passwd")  # query parameters that carry a password


def _passwords(url: str) -> list[str]:
    """The password(s) `url` carries, as written and percent-decoded."""
    if not is_database(url):
        return []
    found = []
    head, _, query = url.split("://", 1)[1].partition("?")
    if "@" in head and ":" in head.rsplit("@", 1)[0]:
        found.append(head.rsplit("@", 1)[0].split(":", 1)[1])
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if eq and key.lower() in SECRET_PARAMS:
            found.append(value)
    return [v for p in found if p for v in {p, urllib.parse.unquote(p)}]


def redact(text: str, url: str) -> str:
    """`text` (an error message, say) with every password of `url` replaced by ***."""
    for secret in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def public_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as JSON for sweep.json and the study's `config` attr: no password in it."""
    tree = json.loads(config.to_json_best_effort(sort_keys=True))
    if isinstance(tree.get("sweep"), dict) and isinstance(tree["sweep"].get("storage"), str):
        tree["sweep"]["storage"] = shown(tree["sweep"]["storage"])
    return tree


def database_url(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The storage to open: `sweep.storage` with the password of `sweep.storage_password`.

    `sweep.storage_password` says where a database's password comes from, so that
    neither the command line nor the config carries it: "" (none, or written in
    the URL), "env:VARIABLE" (an environment variable) or "file:PATH" (the first
    line of a file, e.g. one only its owner can read). The password lives in this
    process's memory only: every file, log line, message and study attr shows
    the URL through `shown`. A bare `postgresql://` URL gets the installed driver
    (`driver_url`).

    Raises:
      ValueError: a bad source, or one that gives no password (the message names it).
    """
    url = storage_url(config.sweep.storage, workdir)
    source = config.sweep.storage_password
    if source:
        field = f"config.sweep.storage_password={source!r}"
        if not is_database(url):
            raise ValueError(
                f"{field}: sweep.storage={shown(url)!r} is a journal file, which takes no "
                f"password; give a database URL or leave storage_password empty"
            )
        if _passwords(url):
            raise ValueError(
                f"{field}: sweep.storage={shown(url)!r} already holds a password; give it once"
            )
        kind, _, where = source.partition(":")
        if kind == "env" and where:
            password = os.environ.get(where, "")
            if not password:
                raise ValueError(f"{field}: the environment variable {where} is not set")
        elif kind == "file" and where:
            try:
                with open(os.path.expanduser(where)) as f:
                    password = f.readline().rstrip("\r\n")
            except OSError as err:
                raise ValueError(f"{field}: cannot read {where}: {err.strerror}") from None
            if not password:
                raise ValueError(f"{field}: the first line of {where} is empty")
        else:
            raise ValueError(
                f"{field} is invalid: give 'env:VARIABLE' or 'file:PATH' (or '' for a "
                f"password in the URL, or none)"
            )
        scheme, rest = url.split("://", 1)
        head, sep, query = rest.partition("?")
        user, at, host = head.rpartition("@")
        if not at:
            raise ValueError(
                f"{field}: sweep.storage={shown(url)!r} names no user to give the password "
                f"to; write it as {scheme}://USER@HOST/DATABASE"
            )
        secret = urllib.parse.quote(password, safe="")
        url = f"{scheme}://{user}:{secret}@{host}{sep}{query}"
    return driver_url(url)


# SQLAlchemy reads a bare "postgresql://" as psycopg2 up to 2.0 and as psycopg (3) from
# 2.1: the bare scheme gets whichever of the two is installed, psycopg first.
POSTGRES_DRIVERS = (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2"))


def driver_url(url: str) -> str:
    """`url` with a bare `postgresql://` (or `postgres://`) mapped to the installed driver.

    Raises:
      ValueError: neither psycopg nor psycopg2 is installed.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for module, driver in POSTGRES_DRIVERS:
        if importlib.util.find_spec(module) is not None:
            return f"{driver}://{rest}"
    raise ValueError(
        f"sweep.storage={shown(url)!r}: no PostgreSQL driver is installed; install psycopg2 "
        f"(requirements-test.txt) and write the URL as postgresql+psycopg2://..."
    )


def open_storage(url: str) -> optuna_api.Storage:
    """The Optuna storage at `url` (see the module doc); a journal file is created.

    Raises:
      ValueError: the URL names no database Optuna can open (the message says why,
        with any password masked).
    """
    if not is_database(url):
        os.makedirs(os.path.dirname(url) or ".", exist_ok=True)
        return optuna_api.journal(url)
    url = driver_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 120}  # seconds a writer waits for the lock
    for attempt in range(5):
        try:
            storage = optuna_api.database(url, kwargs)
            break
        except (ImportError, ModuleNotFoundError) as err:
            raise ValueError(redact(f"sweep.storage={shown(url)!r}: {err}", url)) from None
        except Exception as err:  # a bad URL or an unreachable server: one line names it
            # Workers that start together on a new database race to create its tables:
            # the losers fail once, then find them made.
            if attempt == 4:
                message = f"sweep.storage={shown(url)!r} cannot be opened: {err}"
                raise ValueError(redact(message, url)) from None
            time.sleep(0.5 * (attempt + 1))
    if url.startswith("sqlite"):
        _immediate_transactions(optuna_api.engine_of(storage))
    return storage


def _immediate_transactions(engine) -> None:
    """SQLAlchemy's recipe for SQLite: one `BEGIN IMMEDIATE` per transaction.

    pysqlite by default starts a transaction only at the first write, so a
    read-then-write (Optuna's state transitions) is not atomic across processes;
    with BEGIN IMMEDIATE every transaction holds the write lock from its start.
    """
    from sqlalchemy import event  # heavy: loaded only for a SQLite storage

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below do it

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners are dropped


def study_name(config: ml_collections.ConfigDict) -> str:
    """`sweep-<hash>` of the sweep config: the base config, the axes and the search.

    `space.sweep_id`: cosmetic fields (`progress`, ...) and
    `space.OPERATIONAL_FIELDS` are left out, so the same sweep run with another
    storage, path or report is the same study, and any change to which trials
    run or what they compute is a new one.
    """
    return f"sweep-{space.sweep_id(config)}"


def objective(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """The validation metric that is each trial's value, and its direction.

    `val_accuracy` (maximize) for classifiers; `val_loss` (minimize) for models
    without an accuracy (the autoencoder).
    """
    if models.spec(config.model.name).task == "classify":
        return "val_accuracy", "maximize"
    return "val_loss", "minimize"


@dataclasses.dataclass
class Sweep:
    """The studies of one sweep config in one storage.

    Attributes:
      url: the storage (a journal file path or a database URL, with its password:
        show it through `shown`).
      name: the trials' study name (`study_name`).
      trials: the trials' study; `stages` the `sweep.pretrain` stages' study (None: none).
      created: this worker created the trials' study (and so enqueues its trials).
      stages_created: this worker created the stages' study.
      metric, direction: `objective(config)`.
      replaced: earlier studies of this workdir with another config, as
        `(name, fields that differ)`.
    """

    url: str
    name: str
    trials: optuna_api.StudyHandle
    stages: optuna_api.StudyHandle | None
    created: bool
    stages_created: bool
    metric: str
    direction: str
    replaced: list[tuple[str, list[str]]]


def open_sweep(config, workdir: str, *, url: str, sampler=None, pruner=None) -> Sweep:
    """Joins the sweep's studies in the storage at `url`, else creates them.

    The creator records the config on the study (`public_config`: no password).
    An existing study is only read: a refused run appends nothing to a journal.

    Raises:
      ValueError: a storage that cannot be opened.
    """
    storage = open_storage(url)
    name = study_name(config)
    metric, direction = objective(config)
    study, created = optuna_api.StudyHandle.open(name, storage, direction, sampler, pruner)
    stages, stages_created = None, False
    if len(config.sweep.pretrain):
        stages, stages_created = optuna_api.StudyHandle.open(f"{name}.pretrain", storage, direction)
    fields = space.sweep_fields(config)
    here = os.path.abspath(workdir)
    if created:
        study.set_user_attr("config", public_config(config))
        study.set_user_attr("fields", fields)
        study.set_user_attr("workdir", here)
        study.set_user_attr("metric", metric)
    replaced = []
    for other, attrs in optuna_api.summaries(storage):
        if other == name or attrs.get("workdir") != here or "fields" not in attrs:
            continue
        old = attrs["fields"]
        diff = sorted(k for k in old.keys() | fields.keys() if old.get(k) != fields.get(k))
        replaced.append((other, diff))
    return Sweep(url, name, study, stages, created, stages_created, metric, direction, replaced)


@dataclasses.dataclass(frozen=True)
class Record:
    """One trial of a sweep as the storage holds it, for the reports.

    Attributes:
      trial: the sweep trial (id, overrides, config, pretrain stage).
      state: "complete", "pruned", "running", "waiting", "fail" or "missing"
        (no Optuna trial yet), from its canonical Optuna trial.
      results: that trial's user attrs (results.json's fields once finished).
      values: the validation metric per epoch (the intermediate values).
      number: the Optuna trial number (None: missing).
    """

    trial: space.Trial
    state: str
    results: dict[str, Any]
    values: dict[int, float]
    number: int | None

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "pruned")

    @property
    def id(self) -> str:
        return self.trial.id

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.trial.config

    @property
    def overrides(self) -> dict[str, Any]:
        return self.trial.overrides

    @property
    def pretrain(self) -> str:
        return self.trial.pretrain


def _best_of(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The Optuna trial that stands for one sweep trial.

    The first finished one, else the first live one, else the last that gave up, else the last.
    """
    for states in (FINISHED, LIVE):
        chosen = [t for t in trials if t.state in states]
        if chosen:
            return min(chosen, key=lambda t: t.number)
    gave_up = [t for t in trials if "gave_up" in t.user_attrs]  # failed for good: its error
    return (gave_up or trials or [None])[-1]


def records(trials: list[space.Trial], optuna_trials: Iterable[FrozenTrial]) -> list[Record]:
    """A `Record` per sweep trial, in the order of `trials`."""
    by_id: dict[str, list[FrozenTrial]] = {}
    for t in sorted(optuna_trials, key=lambda t: t.number):
        if trial_key(t) is not None:
            by_id.setdefault(trial_key(t), []).append(t)
    out = []
    for trial in trials:
        chosen = _best_of(by_id.get(trial.id, []))
        if chosen is None:
            out.append(Record(trial, "missing", {}, {}, None))
            continue
        out.append(
            Record(
                trial,
                chosen.state.name.lower(),
                dict(chosen.user_attrs),
                dict(chosen.intermediate_values),
                chosen.number,
            )
        )
    return out


@contextlib.contextmanager
def report_lock(workdir: str):
    """Holds `DIR/.report.lock` (fcntl): workers that finish together write tables in turn."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, ".report.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
