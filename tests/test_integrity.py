"""Store integrity (issue 16): timeouts and a retried read on PostgreSQL, private SQLite files,
masked URLs, constraint failures as 409, and 503s that tell anonymous clients nothing of the store."""

import os
import stat
import time

import psycopg
import pytest

from verifier.cli.main import build_parser
from verifier.enrollment.store import (Conflict, IntegrityConflict, StoreUnavailable, mask_url, open_store,
                                       postgres)
from verifier.web.app import create_app
from verifier.web.extensions import scorer_holder


def postgres_url(database_url):
    if not database_url.startswith("postgresql:"):
        pytest.skip("PostgreSQL only")
    return database_url


def backend_pid(store):
    with store.transaction() as tx:
        return tx.one("SELECT pg_backend_pid()")[0]


def terminate(pid):
    with psycopg.connect(os.environ["TEST_DATABASE_URL"], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


# -- PostgreSQL: no call waits forever, a broken connection costs a read nothing ----------

def test_postgres_connections_carry_timeouts_and_keepalives(database_url):
    store = open_store(postgres_url(database_url))
    params = store._connection().info.get_parameters()
    assert (params["keepalives"], params["keepalives_idle"], params["tcp_user_timeout"]) == ("1", "10", "10000")
    with store.transaction() as tx:
        assert tx.one("SHOW statement_timeout")[0] == f"{postgres.STATEMENT_TIMEOUT_S}s"
        assert tx.one("SHOW search_path")[0].startswith("verifier_test_")  # the URL's own options are kept


def test_url_parameters_override_the_defaults():
    params = postgres.connection_parameters(
        "postgresql://u@h/db?options=-c%20statement_timeout%3D30s&keepalives_idle=60")
    assert params["options"] == "-c statement_timeout=30s" and params["keepalives_idle"] == "60"
    assert params["tcp_user_timeout"] == 10_000
    assert postgres.client_deadline(params) == 30 + postgres.CLIENT_MARGIN_S
    assert postgres.client_deadline({"options": "-c statement_timeout=1500"}) == 1.5 + postgres.CLIENT_MARGIN_S
    assert postgres.client_deadline({"options": "-c statement_timeout=0"}) is None  # off: no deadline either


def test_a_slow_query_is_cut_by_statement_timeout(database_url, monkeypatch):
    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT_S", 1)
    store = open_store(postgres_url(database_url))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        with store.transaction() as tx:
            tx.run("SELECT pg_sleep(10)")
    assert time.monotonic() - started < 5 and "statement timeout" in str(err.value)
    assert err.value.message == "store unavailable: the database failed or timed out"
    assert store.count_templates() == 0  # and the store works on


def test_a_read_is_retried_once_after_the_connection_was_killed(database_url):
    store = open_store(postgres_url(database_url))
    store.create_subject("alice")
    pid = backend_pid(store)
    terminate(pid)
    assert store.get_subject("alice")["id"] == "alice"  # the dead connection was replaced, once
    assert backend_pid(store) != pid


def test_a_write_is_not_retried_after_the_connection_was_killed(database_url):
    store = open_store(postgres_url(database_url))
    terminate(backend_pid(store))
    with pytest.raises(StoreUnavailable):
        store.create_subject("alice")
    store.create_subject("alice")  # the next call has a fresh connection
    assert store.list_subjects()[2] == 1


# -- constraint failures are 409, not 503 ---------------------------------------------------

def test_a_duplicate_key_hash_is_409(store):
    store.add_key("first", "same-hash")
    with pytest.raises(IntegrityConflict) as err:
        store.add_key("second", "same-hash")
    assert isinstance(err.value, Conflict) and err.value.status == 409
    assert "api_keys" not in err.value.message  # the constraint's name stays in the server log


# -- SQLite files are private ------------------------------------------------------------------

def test_sqlite_files_are_created_0600(tmp_path):
    old = os.umask(0o022)
    try:
        store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
        store.create_subject("alice")
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert modes == {"store.db": 0o600, "store.db-wal": 0o600, "store.db-shm": 0o600}


# -- 503s: "store unavailable", no path or driver text; details for operators --------------------

def test_a_missing_directory_is_503_without_the_path(tmp_path, fusion_bundle, scorer, caplog):
    missing = tmp_path / "secret-place" / "x.db"
    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "TESTING": True, "DATABASE_URL": f"sqlite:///{missing}"})
    scorer_holder(app).scorer = scorer
    response = app.test_client().get("/v1/subjects")
    message = response.get_json()["error"]["message"]
    assert response.status_code == 503 and message.startswith("store unavailable")
    assert "secret-place" not in message and "sqlite" not in message.lower()
    assert "secret-place" in caplog.text  # the server log has it


def test_an_unreachable_postgres_hides_host_and_driver_text():
    with pytest.raises(StoreUnavailable) as err:
        open_store("postgresql://user:pw@127.0.0.1:1/db")
    assert err.value.message == "store unavailable: cannot connect to the database"
    assert "127.0.0.1:1" in str(err.value) and "pw" not in str(err.value)


# -- passwords never printed --------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:s3cret@db:5432/v", "postgresql://u:***@db:5432/v"),
    ("postgres://:s3cret@db/v?sslmode=require", "postgres://:***@db/v?sslmode=require"),
    ("postgresql://u@db/v?password=s3cret&sslmode=require", "postgresql://u@db/v?password=***&sslmode=require"),
    ("postgresql://u:p@ss:s3cret@db/v", "postgresql://u:***@db/v"),
    ("postgresql://u@db/v", "postgresql://u@db/v"),
    ("sqlite:///verifier.db", "sqlite:///verifier.db"),
    ("sqlite:////var/lib/v.db", "sqlite:////var/lib/v.db"),
    ("postgresql://[::1", "postgresql:***"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_help_masks_the_database_password(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://ops:s3cr%40t@db.internal:5432/verifier")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["keys", "list", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "s3cr" not in out and "postgresql://ops:***@db.internal:5432/verifier" in out


# -- a bundle changed on disk is a 503 at serve, never served ----------------------------------

def test_a_changed_model_keras_answers_503_bundle_error(calibrated_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(calibrated_bundle, bundle)
    with open(bundle / "model.keras", "ab") as handle:
        handle.write(b"\0")
    app = create_app({"VERIFIER_BUNDLE": str(bundle), "TESTING": True,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"})
    response = app.test_client().get("/v1/calibration")
    error = response.get_json()["error"]
    assert response.status_code == 503 and error["code"] == "bundle_error"
    assert "model.keras does not match the sha256 in bundle.json" in error["message"]


def test_a_frozen_server_is_given_up_on_by_the_client(database_url, monkeypatch):
    """SIGSTOP the backend: its kernel still acknowledges TCP, so only the client's own deadline ends the wait."""
    import signal

    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT_S", 1)
    monkeypatch.setattr(postgres, "CLIENT_MARGIN_S", 1)
    store = open_store(postgres_url(database_url))
    pid = backend_pid(store)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            with store.transaction() as tx:
                tx.run("SELECT 1")
        assert time.monotonic() - started < 5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert store.count_templates() == 0  # a new connection: the store works on
