"""The enrollment store on SQLite and PostgreSQL: CRUD, atomic enrollment, migrations, keys."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from verifier.core.errors import VerifierError
from verifier.enrollment.store import MAX_PAGE, Conflict, NotFound, StoreUnavailable, open_store, schema

ROOT = Path(__file__).resolve().parents[1]


def vectors(n, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def run_python(code, *args, **popen):
    """Start `code` in a fresh interpreter (no fork: each child opens its own connection)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_subject_crud(store):
    created = store.create_subject("alice", {"team": "a"})
    assert created["id"] == "alice" and created["metadata"] == {"team": "a"}
    with pytest.raises(Conflict):
        store.create_subject("alice")
    store.create_subject("bob")
    got = store.get_subject("alice")
    assert got["template_count"] == 0 and got["metadata"] == {"team": "a"}
    store.delete_subject("bob")
    with pytest.raises(NotFound):
        store.get_subject("bob")
    with pytest.raises(NotFound):
        store.delete_subject("bob")


def test_list_is_paged_in_id_order(store):
    for name in ("c", "a", "e", "b", "d"):
        store.create_subject(name)
    store.add_templates("b", "B1", vectors(2))
    page, after, total = store.list_subjects(limit=2)
    assert [s["id"] for s in page] == ["a", "b"] and after == "b" and total == 5
    assert page[1]["template_count"] == 2
    page, after, _ = store.list_subjects(limit=2, after=after)
    assert [s["id"] for s in page] == ["c", "d"]
    page, after, _ = store.list_subjects(limit=2, after=after)
    assert [s["id"] for s in page] == ["e"] and after is None


@pytest.mark.parametrize("bad", [0, MAX_PAGE + 1, "2", 1.5, True, None])
def test_page_limit_is_checked(store, bad):
    with pytest.raises(VerifierError) as err:
        store.list_subjects(limit=bad)
    assert err.value.code == "invalid_option" and f"1 to {MAX_PAGE}" in err.value.message


@pytest.mark.parametrize("bad", ["", "-x", "a b", "x" * 129, "é", None, 5])
def test_subject_id_is_checked(store, bad):
    with pytest.raises(VerifierError) as err:
        store.create_subject(bad)
    assert err.value.status == 400


@pytest.mark.parametrize("bad", [[1, 2], "text", {"big": "x" * 20000}])
def test_metadata_is_checked(store, bad):
    with pytest.raises(VerifierError) as err:
        store.create_subject("alice", bad)
    assert err.value.status == 400


def test_templates_roundtrip_and_delete_cascades(store):
    store.create_subject("alice")
    before = store.version()
    emb = vectors(3)
    ids = store.add_templates("alice", "B1", emb, images=[b"i0", b"i1", b"i2"])
    assert len(set(ids)) == 3 and store.version() == before + 1
    by_bundle = store.subject_templates("alice")[1]
    assert list(by_bundle) == ["B1"]
    got = by_bundle["B1"]
    assert got.dtype == np.float32 and sorted(map(tuple, got)) == sorted(map(tuple, emb))
    assert store.get_subject("alice")["templates_by_bundle"] == {"B1": 3}
    assert store.template_images(ids) == {ids[0]: b"i0", ids[1]: b"i1", ids[2]: b"i2"}
    store.delete_subject("alice")
    assert store.count_templates() == 0 and store.version() == before + 2


def test_enrolling_a_missing_subject(store):
    with pytest.raises(NotFound):
        store.add_templates("ghost", "B1", vectors(1))
    assert store.count_templates() == 0
    store.add_templates("ghost", "B1", vectors(2), create=True, metadata={"k": 1})
    assert store.get_subject("ghost")["metadata"] == {"k": 1}


def test_images_are_kept_only_when_configured(database_url):
    store = open_store(database_url, keep_images=False)
    store.add_templates("alice", "B1", vectors(1), images=[b"raw"], create=True)
    assert [row[3] for row in store.stale_templates("B2")] == [False]
    assert store.subject_image("alice", "B1") is None


def test_subject_image_prefers_the_bundle_then_the_first_kept(store):
    store.create_subject("bare")
    assert store.subject_image("bare", "B2") is None
    store.add_templates("a", "B1", vectors(2), images=[b"old0", b"old1"], create=True)
    store.add_templates("a", "B2", vectors(2), images=[b"new0", b"new1"])
    assert store.subject_image("a", "B2") in (b"new0", b"new1")  # one batch: ordered by random template id
    assert store.subject_image("a", "B3") in (b"old0", b"old1")
    with pytest.raises(NotFound):
        store.subject_image("ghost", "B1")


def test_gallery_groups_rows_by_subject(store):
    b_ids = store.add_templates("b", "B1", vectors(2, seed=1), create=True)
    a_ids = store.add_templates("a", "B1", vectors(3, seed=2), create=True)
    store.add_templates("a", "B2", vectors(1, seed=3))
    subjects, template_ids, matrix = store.gallery("B1")
    assert sorted(subjects) == ["a", "a", "a", "b", "b"] and matrix.shape == (5, 8)
    assert subjects == sorted(subjects, key=subjects.index)  # contiguous groups
    rows_of = {subject: {t for s, t in zip(subjects, template_ids) if s == subject} for subject in ("a", "b")}
    assert rows_of == {"a": set(a_ids), "b": set(b_ids)}  # each row's own id
    assert store.count_templates("B2") == 1


def test_gallery_fetches_by_version_and_counts_removals(store):
    store.add_templates("a", "B1", vectors(2, seed=1), create=True)
    (v1, r1) = store.state()
    store.add_templates("b", "B1", vectors(1, seed=2), create=True)
    v2, r2 = store.state()
    assert v2 == v1 + 1 and r2 == r1
    assert store.gallery("B1", after=v1)[0] == ["b"]
    assert store.gallery("B1", upto=v1)[0] == ["a", "a"]
    store.delete_subject("b")
    assert store.state() == (v2 + 1, r2 + 1)


def test_replace_embeddings_moves_templates_to_a_new_bundle(store):
    ids = store.add_templates("a", "OLD", vectors(2), images=[b"x", b"y"], create=True)
    assert {row[1] for row in store.stale_templates("NEW")} == {"a"}
    version = store.version()
    assert store.replace_embeddings("NEW", [(ids[0], np.zeros(8)), ("gone", np.zeros(8))]) == 1
    assert store.version() == version + 1
    assert {b: len(m) for b, m in store.subject_templates("a")[1].items()} == {"NEW": 1, "OLD": 1}


def test_api_keys(store):
    assert store.key_status("h") == (False, False, None)
    record = store.add_key("ci", "h1")
    assert record["scope"] == "write"
    assert store.key_status("h1") == (True, True, "write") and store.key_status("h2") == (True, True, None)
    assert store.key_status(None) == (True, True, None)
    store.revoke_key(record["id"])
    assert store.key_status("h1") == (True, False, None)  # auth stays enabled with no active key
    assert store.list_keys()[0]["revoked"] is not None
    with pytest.raises(NotFound):
        store.revoke_key(record["id"])
    with pytest.raises(VerifierError):
        store.add_key("  ", "h3")


def test_api_key_scopes(store):
    store.add_key("reader", "hr", "read")
    assert store.key_status("hr") == (True, True, "read")
    assert [k["scope"] for k in store.list_keys()] == ["read"]
    with pytest.raises(VerifierError) as err:
        store.add_key("admin", "hx", "admin")
    assert err.value.code == "invalid_key_scope"


def test_migration_keeps_old_keys_enabled_and_writable(database_url):
    """A store with keys from before scopes: they become write keys, and auth counts as enabled."""
    old = open_store(database_url, migrate=False)
    assert old.migrate(target=3) == 3
    with old.transaction(write=True) as tx:
        tx.run("INSERT INTO api_keys (id, name, key_hash, created, revoked) VALUES "
               "('k1', 'old', 'h1', '2025-01-01T00:00:00Z', '2025-02-01T00:00:00Z')")
    assert old.migrate() == schema.LATEST
    assert old.key_status("h1") == (True, False, None)  # revoked before the upgrade: still closed
    assert old.list_keys()[0]["scope"] == "write"


def test_migrates_from_an_older_schema_version(database_url):
    old = open_store(database_url, migrate=False)
    assert old.migrate(target=1) == 1
    with old.transaction(write=True) as tx:  # data written by a version-1 verifier
        tx.run("INSERT INTO subjects (id, metadata, created) VALUES ('old', '{}', '2025-01-01T00:00:00Z')")
        tx.run("INSERT INTO templates (id, subject_id, bundle_id, embedding, created) "
               "VALUES ('t1', 'old', 'B0', ?, '2025-01-01T00:00:00Z')", (np.ones(8, "<f4").tobytes(),))
    old.close()
    store = open_store(database_url, keep_images=True)
    assert store.schema_version() == schema.LATEST == 5
    assert store.get_subject("old")["templates_by_bundle"] == {"B0": 1}
    assert store.get_subject("old")["modality"] is None  # 5: rows from before modalities: the default one
    assert store.stale_templates("B1") == [("t1", "old", "B0", False)]
    store.add_key("after-migration", "h")
    assert store.migrate() == schema.LATEST  # idempotent


def test_refuses_a_newer_schema(store):
    with store.transaction(write=True) as tx:
        tx.run("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreUnavailable, match="newer"):
        store.migrate()


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(StoreUnavailable, match="directory .* does not exist"):
        open_store(f"sqlite:///{tmp_path / 'nope' / 'x.db'}")


def test_unreachable_postgres_is_a_clear_error():
    with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL at postgresql://127.0.0.1:1/"):
        open_store("postgresql://nobody:secret@127.0.0.1:1/verifier")


def test_unknown_url_scheme():
    with pytest.raises(StoreUnavailable, match="unsupported DATABASE_URL"):
        open_store("mysql://x")


def test_concurrent_enrollment_from_several_processes(database_url):
    open_store(database_url).close()  # migrate once up front; the children race on writes only
    code = """
        import sys
        import numpy as np
        from verifier.enrollment.store import open_store
        store = open_store(sys.argv[1])
        worker = int(sys.argv[2])
        for i in range(15):
            store.add_templates(f"shared{i % 3}", "B1", np.full((2, 8), worker, np.float32), create=True)
            store.add_templates(f"w{worker}-{i}", "B1", np.ones((1, 8), np.float32), create=True)
        """
    procs = [run_python(code, database_url, str(w)) for w in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = open_store(database_url)
    assert store.count_templates() == 4 * 15 * 3
    assert store.list_subjects(limit=1000)[2] == 3 + 4 * 15
    assert store.get_subject("shared0")["template_count"] == 4 * 5 * 2
    assert store.version() == 4 * 15 * 2


def test_sigkill_during_an_enrollment_leaves_nothing(database_url):
    open_store(database_url).close()
    code = """
        import sys, time
        import numpy as np
        from verifier.enrollment.store import base, open_store
        store = open_store(sys.argv[1])
        original = base.Tx.run
        inserted = []
        def run(self, sql, params=()):
            cursor = original(self, sql, params)
            if sql.startswith("INSERT INTO templates"):
                inserted.append(1)
                if len(inserted) == 3:  # mid-enrollment: subject and 3 of 5 templates written
                    print("mid", flush=True)
                    time.sleep(60)
            return cursor
        base.Tx.run = run
        store.add_templates("victim", "B1", np.ones((5, 8), np.float32), create=True)
        """
    proc = run_python(code, database_url)
    assert proc.stdout.readline().strip() == "mid", proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    store = open_store(database_url)
    assert store.count_templates() == 0
    with pytest.raises(NotFound):
        store.get_subject("victim")
    store.add_templates("after", "B1", vectors(1), create=True)  # no lock left behind
    assert store.count_templates() == 1


def test_a_missing_sqlite_file_is_never_recreated_empty(tmp_path):
    """create=False refuses a missing file; once opened, a file moved away is not recreated by another thread."""
    import threading

    path = tmp_path / "store.db"
    with pytest.raises(StoreUnavailable):
        open_store(f"sqlite:///{path}", create=False)
    assert not path.exists()
    store = open_store(f"sqlite:///{path}")  # made on purpose
    store.add_key("ops", "h1")
    path.rename(tmp_path / "moved.db")
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    errors = []

    def other_thread():
        try:
            store.key_status(None)
        except StoreUnavailable as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert errors and "does not exist" in str(errors[0]) and not path.exists()


def test_an_open_sqlite_store_moved_away_answers_503_until_it_is_back(tmp_path):
    """Found by bench/hostile.py: after `mv verifier.db`, a thread's open connection kept reading and
    committing into the moved file (201s, the -wal left at the old path); now each transaction checks
    that the path still names the file it opened: 503 while it does not, and served again once back."""
    path, moved = tmp_path / "store.db", tmp_path / "moved.db"
    store = open_store(f"sqlite:///{path}")
    store.create_subject("before")
    path.rename(moved)
    for call in (lambda: store.list_subjects(10, None), lambda: store.create_subject("while_moved")):
        with pytest.raises(StoreUnavailable, match="moved|does not exist") as caught:
            call()
        assert str(path) not in caught.value.message  # the client's message names no path
    assert not path.exists()  # never recreated empty
    moved.rename(path)
    assert [s["id"] for s in store.list_subjects(10, None)[0]] == ["before"]
    store.create_subject("after")
    replacement = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    replacement.close()
    (tmp_path / "other.db").replace(path)  # another file put in its place: not silently served either
    with pytest.raises(StoreUnavailable):
        store.list_subjects(10, None)
    store.close()
