"""No secret on disk: a database password never reaches a file, a log, a message or the study.

The password may be written in `sweep.storage`'s URL, or come from
`sweep.storage_password` ("env:VARIABLE" or "file:PATH") so that no command
line carries it. Either way it lives in the worker's memory only: sweep.json
(also inside `config.sweep.storage`), config.json, results.json, the tables,
the printed lines, the error messages and the study's attributes in the
database (what optuna-dashboard shows) all show `user:***`. The full sweeps run
on a throwaway PostgreSQL server (tests/helpers/postgres.py; skipped without one).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from research.sweep import runner, storage
from tests.helpers import postgres, tiny_sweep

SECRET = "s3cret-Pw9"


def test_an_unreachable_database_is_refused_in_one_line_without_its_password(tmp_path):
    config = tiny_sweep.config()
    config.sweep.storage = f"postgresql+psycopg2://alice:{SECRET}@127.0.0.1:9/sweeps"
    workdir = tmp_path / "sweep"
    with pytest.raises(ValueError) as err:
        runner.run_sweep(config, str(workdir))
    message = str(err.value)
    assert message.startswith(
        "sweep.storage='postgresql+psycopg2://alice:***@127.0.0.1:9/sweeps' cannot be opened"
    )
    assert SECRET not in message
    assert not workdir.exists()  # a refused sweep leaves no (empty) workdir behind


def test_the_password_comes_from_an_environment_variable_or_a_file(tmp_path, monkeypatch):
    config = tiny_sweep.config()
    config.sweep.storage = "postgresql+psycopg2://alice@db.example/sweeps?sslmode=require"
    config.sweep.storage_password = "env:SWEEP_DB_PASSWORD"
    monkeypatch.setenv("SWEEP_DB_PASSWORD", "p@ss:word/1")
    url = storage.database_url(config, str(tmp_path))
    # Percent-encoded into the URL, so any character may be in it.
    assert url == "postgresql+psycopg2://alice:p%40ss%3Aword%2F1@db.example/sweeps?sslmode=require"
    assert storage.shown(url) == "postgresql+psycopg2://alice:***@db.example/sweeps?sslmode=require"
    assert storage.redact(f"failed for {url} (p@ss:word/1)", url) == (
        "failed for postgresql+psycopg2://alice:***@db.example/sweeps?sslmode=require (***)"
    )
    secret_file = tmp_path / "pw"
    secret_file.write_text(f"{SECRET}\nignored\n")
    config.sweep.storage_password = f"file:{secret_file}"
    assert storage.database_url(config, str(tmp_path)).startswith(
        f"postgresql+psycopg2://alice:{SECRET}@db.example/"
    )


@pytest.mark.parametrize(
    "storage_url, source, message",
    [
        (
            "postgresql+psycopg2://alice@h/db",
            "env:NO_SUCH_VARIABLE_FOR_SWEEPS",
            "config.sweep.storage_password='env:NO_SUCH_VARIABLE_FOR_SWEEPS': the environment "
            "variable NO_SUCH_VARIABLE_FOR_SWEEPS is not set",
        ),
        (
            "postgresql+psycopg2://alice@h/db",
            "file:/no/such/file",
            "config.sweep.storage_password='file:/no/such/file': cannot read /no/such/file: "
            "No such file or directory",
        ),
        (
            "postgresql+psycopg2://alice@h/db",
            "vault:x",
            "config.sweep.storage_password='vault:x' is invalid: give 'env:VARIABLE' or "
            "'file:PATH' (or '' for a password in the URL, or none)",
        ),
        (
            f"postgresql+psycopg2://alice:{SECRET}@h/db",
            "env:HOME",
            "config.sweep.storage_password='env:HOME': "
            "sweep.storage='postgresql+psycopg2://alice:***@h/db' already holds a password; "
            "give it once",
        ),
        (
            "",
            "env:HOME",
            "config.sweep.storage_password='env:HOME': sweep.storage=",
        ),
    ],
)
def test_a_bad_password_source_is_one_line_naming_the_field(tmp_path, storage_url, source, message):
    config = tiny_sweep.config()
    config.sweep.storage, config.sweep.storage_password = storage_url, source
    with pytest.raises(ValueError) as err:
        runner.run_sweep(config, str(tmp_path / "sweep"))
    assert str(err.value).startswith(message)
    assert SECRET not in str(err.value)
    assert not (tmp_path / "sweep").exists()


def test_the_config_in_sweep_json_and_the_study_shows_no_password():
    config = tiny_sweep.config()
    config.sweep.storage = f"mysql+pymysql://bob:{SECRET}@h:3306/db?password={SECRET}"
    public = storage.public_config(config)
    assert public["sweep"]["storage"] == "mysql+pymysql://bob:***@h:3306/db?password=***"
    assert config.sweep.storage.count(SECRET) == 2  # the caller's config is left as it was


def test_a_bare_postgresql_url_gets_the_installed_driver_or_a_line_naming_psycopg2(monkeypatch):
    installed = {"psycopg2"}
    monkeypatch.setattr(
        storage.importlib.util, "find_spec", lambda name: object() if name in installed else None
    )
    assert storage.driver_url("postgresql://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert storage.driver_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    installed.add("psycopg")  # psycopg 3: what SQLAlchemy 2.1 means by the bare scheme
    assert storage.driver_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage.driver_url("sqlite:///x.db") == "sqlite:///x.db"
    installed.clear()
    with pytest.raises(ValueError, match=r"postgresql\+psycopg2://") as err:
        storage.driver_url(f"postgresql://u:{SECRET}@h/db")
    assert SECRET not in str(err.value)


# ------------------------------------------------------------------ whole sweeps, grepped


def everything(workdir) -> dict[str, bytes]:
    """Every file the sweep wrote, by path."""
    out = {}
    for folder, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[path] = f.read()
    return out


def database_dump(url: str) -> str:
    """Every row of every table of the database, as text (the study's attrs among them)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    rows = []
    with engine.connect() as connection:
        for table in sqlalchemy.inspect(engine).get_table_names():
            rows += [repr(r) for r in connection.execute(sqlalchemy.text(f"SELECT * FROM {table}"))]
    engine.dispose()
    return "\n".join(rows)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["url", "env"])
def test_a_sweep_on_a_database_with_a_password_writes_it_nowhere(tmp_path, where):
    url = postgres.database_url()  # trust authentication: any password is accepted
    with_password = url.replace("postgres@", f"postgres:{SECRET}@")
    env = dict(os.environ)
    if where == "url":
        flags = [f"--config.sweep.storage={with_password}"]
    else:
        env["SWEEP_TEST_DB_PASSWORD"] = SECRET
        flags = [
            f"--config.sweep.storage={url}",
            "--config.sweep.storage_password=env:SWEEP_TEST_DB_PASSWORD",
        ]
    workdir = tmp_path / "sweep"
    proc = subprocess.run(
        tiny_sweep.command(workdir, *flags),
        cwd=tiny_sweep.ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Trials finished: 6/6" in proc.stdout
    files = everything(workdir)
    assert len([p for p in files if p.endswith("results.json")]) == 6
    assert [p for p, data in files.items() if SECRET.encode() in data] == []
    assert SECRET not in proc.stdout + proc.stderr
    dump = database_dump(url)
    assert "learning_rate" in dump and "sweep-" in dump  # the study and its config attr
    assert SECRET not in dump
    if where == "url":
        assert "postgres:***@" in files[str(workdir / "sweep.json")].decode()
