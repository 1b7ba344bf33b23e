"""The store's operations, written once in SQL that SQLite and PostgreSQL both run.

A dialect subclass supplies only what differs: how to connect, how to begin a
transaction (and lock for a migration), the placeholder style and the byte-string type.
Every write runs in one transaction, so an enrollment of several images lands whole or
not at all, even when the process is killed in the middle. Every write that changes
the templates also bumps `store_state.version` (and `removals` when rows go away or
change), which per-worker caches compare against; new templates carry the version of the
transaction that wrote them, so a cache can fetch just the rows it has not seen.
A constraint the database enforces answers 409 (`IntegrityConflict`), a database that fails
503 (`StoreUnavailable`); a read whose open connection broke runs once more (`retried_read`).
"""

import functools
import json
import os
import re
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np

from verifier.core.errors import VerifierError
from verifier.enrollment.store.errors import (Conflict, ConnectionLost, IntegrityConflict, NotFound,
                                              StoreUnavailable, log)
from verifier.enrollment.store.schema import LATEST, migrate as migrate_schema

SUBJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
SUBJECT_ID = re.compile(SUBJECT_ID_PATTERN)
MAX_METADATA_BYTES = 16 * 1024
PAGE_SIZE = 50  # subjects per page unless asked otherwise
MAX_PAGE = 1000
KEY_SCOPES = ("read", "write")  # write implies read


def now():
    """UTC time as ISO 8601 text: sortable, and the same in both dialects."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_subject_id(subject_id):
    """A subject id is 1-128 characters of letters, digits and . _ : @ -, starting alphanumeric."""
    if not isinstance(subject_id, str) or not SUBJECT_ID.fullmatch(subject_id):
        raise VerifierError("subject id must be 1-128 characters of letters, digits and . _ : @ - "
                            "starting with a letter or digit", code="invalid_subject_id")
    return subject_id


def check_metadata(metadata):
    """Metadata is a JSON object of at most 16 KiB; returns its canonical text."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise VerifierError("metadata must be a JSON object", code="invalid_metadata")
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise VerifierError(f"metadata is larger than {MAX_METADATA_BYTES} bytes", code="invalid_metadata")
    return text


def check_page_limit(limit):
    """A page holds 1 to MAX_PAGE subjects; anything else (text, a float, a bool) is a 400."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise VerifierError(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}", code="invalid_option")
    return limit


def modality_filter(modality, default_modality, column="s.modality"):
    """SQL (` AND ...`) and parameters keeping rows of `modality`; NULL counts as `default_modality`.

    `modality` None keeps every row (callers that know of one bundle only).
    """
    if modality is None:
        return "", ()
    if modality == default_modality:
        return f" AND ({column} = ? OR {column} IS NULL)", (modality,)
    return f" AND {column} = ?", (modality,)


def modality_mismatch(subject_id, subject_modality, wanted):
    """The 409 for a subject used through another modality than its own."""
    return Conflict(f"subject {subject_id!r} belongs to modality {subject_modality!r}, but this request uses "
                    f"modality {wanted!r}: a subject is compared only by the bundle of its own modality. "
                    f"Send modality={subject_modality} with the request, or use a subject of modality {wanted!r}",
                    code="modality_mismatch")


def check_modality(subject_id, stored, wanted, default_modality):
    """409 `modality_mismatch` unless the subject (its stored modality, NULL = the default) is `wanted`'s."""
    if wanted is None:
        return
    effective = stored if stored is not None else default_modality
    if effective != wanted:
        raise modality_mismatch(subject_id, effective, wanted)


def embedding_bytes(vector):
    """One embedding as little-endian float32 bytes, the stored form."""
    return np.asarray(vector, dtype="<f4").tobytes()


def embedding_matrix(blobs):
    """Stored float32 bytes -> an (N, D) float32 matrix."""
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.frombuffer(b"".join(bytes(b) for b in blobs), dtype="<f4").reshape(len(blobs), -1)


def retried_read(method):
    """An idempotent read, run once more (on a new connection) when the connection it used broke.

    Only reads: a write whose connection broke may have committed, so it answers 503 instead.
    """

    @functools.wraps(method)
    def read(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except ConnectionLost:
            return method(self, *args, **kwargs)

    return read


class Tx:
    """One open transaction: runs parameterised SQL written with `?` placeholders."""

    def __init__(self, cursor, placeholder):
        self._cursor = cursor
        self._placeholder = placeholder

    def run(self, sql, params=()):
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        self._cursor.execute(sql, params)
        return self._cursor

    def one(self, sql, params=()):
        return self.run(sql, params).fetchone()

    def all(self, sql, params=()):
        return self.run(sql, params).fetchall()

    @property
    def rowcount(self):
        return self._cursor.rowcount


class SqlStore:
    """Subjects, templates and API keys in a SQL database; one connection per thread and process."""

    dialect = None
    blob_type = None
    placeholder = "?"
    integrity_errors = ()  # the driver's exception for a broken foreign key or unique constraint
    connection_errors = ()  # the driver's exceptions for a lost or refused connection

    def __init__(self, url, *, keep_images=False):
        self.url = url
        self.keep_images = keep_images
        self._local = threading.local()
        self._pid = os.getpid()

    # -- what a dialect supplies -------------------------------------------------------

    def _connect(self):
        raise NotImplementedError

    def _begin(self, conn, write, exclusive):
        """A context manager around one transaction on `conn` yielding a DB-API cursor."""
        raise NotImplementedError

    def describe(self):
        """Where the data lives, without secrets (for messages and /readyz)."""
        raise NotImplementedError

    @staticmethod
    def _lost(conn):
        """Whether `conn` broke (its server went away) rather than refused one statement."""
        return False

    # -- connections and transactions --------------------------------------------------

    def _connection(self):
        """This thread's connection; a forked child never reuses its parent's."""
        if os.getpid() != self._pid:
            self._local = threading.local()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _drop_connection(self):
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing more to release
                pass

    @contextmanager
    def transaction(self, write=False, exclusive=False):
        """A transaction as a `Tx`; committed on success, rolled back on any exception."""
        conn = self._connection()
        try:
            with self._begin(conn, write, exclusive) as cursor:
                yield Tx(cursor, self.placeholder)
        except self.integrity_errors as exc:  # before connection_errors: SQLite's is a DatabaseError
            log.warning("store %s refused a write: %s", self.describe(), exc)
            raise IntegrityConflict("the change conflicts with what is stored (a duplicate or a missing row)") from None
        except self.connection_errors as exc:
            error = ConnectionLost if self._lost(conn) else StoreUnavailable
            self._drop_connection()
            raise error("the database failed or timed out",
                        detail=f"store {self.describe()} failed: {exc}".strip()) from None

    def close(self):
        """Close this thread's connection (others close when their threads end)."""
        self._drop_connection()

    # -- schema ------------------------------------------------------------------------

    def migrate(self, target=LATEST):
        """Bring the schema up to `target`, once, even with several processes racing."""
        with self.transaction(write=True, exclusive=True) as tx:
            version = migrate_schema(tx, self.blob_type, target)
        if version > LATEST:
            raise StoreUnavailable("its schema is newer than this verifier",
                                   detail=f"store {self.describe()} has schema version {version}, newer than "
                                          f"this verifier understands ({LATEST}): upgrade the verifier")
        return version

    @retried_read
    def schema_version(self):
        with self.transaction() as tx:
            return tx.one("SELECT version FROM schema_version")[0]

    def version(self):
        """The change counter: it moves whenever templates are added, changed or deleted."""
        return self.state()[0]

    @retried_read
    def state(self):
        """(version, removals): the change counter and the count of changes that removed rows."""
        with self.transaction() as tx:
            version, removals = tx.one("SELECT version, removals FROM store_state WHERE id = 1")
        return int(version), int(removals)

    @staticmethod
    def _bump(tx, removal=False):
        """Move the change counter (taking its row lock until commit); returns the new version."""
        extra = ", removals = removals + 1" if removal else ""
        return int(tx.one(f"UPDATE store_state SET version = version + 1{extra} WHERE id = 1 RETURNING version")[0])

    # -- subjects ----------------------------------------------------------------------

    def create_subject(self, subject_id, metadata=None, modality=None):
        """Create a subject (of `modality`; None: the default one); Conflict when the id is taken."""
        check_subject_id(subject_id)
        text = check_metadata(metadata)
        created = now()
        with self.transaction(write=True) as tx:
            tx.run("INSERT INTO subjects (id, metadata, created, modality) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (id) DO NOTHING", (subject_id, text, created, modality))
            if tx.rowcount != 1:
                raise Conflict(f"subject {subject_id!r} already exists", code="subject_exists")
        return {"id": subject_id, "metadata": json.loads(text), "created": created, "modality": modality,
                "template_count": 0, "templates_by_bundle": {}}

    @retried_read
    def get_subject(self, subject_id):
        """A subject with its template counts per bundle; NotFound when absent."""
        with self.transaction() as tx:
            row = tx.one("SELECT id, metadata, created, modality FROM subjects WHERE id = ?", (subject_id,))
            if row is None:
                raise NotFound(f"subject {subject_id!r} not found", code="subject_not_found")
            counts = tx.all("SELECT bundle_id, COUNT(*) FROM templates WHERE subject_id = ? "
                            "GROUP BY bundle_id ORDER BY bundle_id", (subject_id,))
        by_bundle = {bundle: int(n) for bundle, n in counts}
        return {"id": row[0], "metadata": json.loads(row[1]), "created": row[2], "modality": row[3],
                "template_count": sum(by_bundle.values()), "templates_by_bundle": by_bundle}

    @retried_read
    def list_subjects(self, limit=PAGE_SIZE, after=None, *, modality=None, default_modality=None):
        """One page of subjects in id order after the id `after`; returns (subjects, next_after, total).

        With `modality`, only its subjects (NULL counting as `default_modality`'s), and `total` of them.
        """
        check_page_limit(limit)
        where, params = modality_filter(modality, default_modality)
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT s.id, s.metadata, s.created, s.modality, COUNT(t.id) FROM subjects s "
                f"LEFT JOIN templates t ON t.subject_id = s.id WHERE s.id > ?{where} "
                "GROUP BY s.id, s.metadata, s.created, s.modality ORDER BY s.id LIMIT ?",
                (after or "", *params, limit + 1))
            total = tx.one(f"SELECT COUNT(*) FROM subjects s WHERE 1 = 1{where}", params)[0]
        subjects = [{"id": r[0], "metadata": json.loads(r[1]), "created": r[2], "modality": r[3],
                     "template_count": int(r[4])} for r in rows[:limit]]
        next_after = subjects[-1]["id"] if len(rows) > limit else None
        return subjects, next_after, int(total)

    def delete_subject(self, subject_id):
        """Delete a subject and (by cascade) its templates; NotFound when absent."""
        with self.transaction(write=True) as tx:
            tx.run("DELETE FROM subjects WHERE id = ?", (subject_id,))
            if tx.rowcount != 1:
                raise NotFound(f"subject {subject_id!r} not found", code="subject_not_found")
            self._bump(tx, removal=True)

    # -- templates ---------------------------------------------------------------------

    def add_templates(self, subject_id, bundle_id, embeddings, images=None, *, create=False, metadata=None,
                      modality=None, default_modality=None):
        """Store several embeddings for one subject in ONE transaction; returns their ids.

        `images` (encoded bytes, one per embedding) are kept only when the store was opened
        with keep_images. `create=True` creates a missing subject in the same transaction (of
        `modality`). With `modality`, a subject of another one (NULL: `default_modality`) is a
        409 `modality_mismatch`, checked in the same transaction.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise ValueError("embeddings must be a non-empty (N, D) array")
        if images is not None and len(images) != len(embeddings):
            raise ValueError("one image per embedding")
        check_subject_id(subject_id)
        text = check_metadata(metadata)
        created = now()
        ids = [uuid.uuid4().hex for _ in embeddings]
        rows = [(tid, subject_id, bundle_id, embedding_bytes(vector),
                 bytes(images[i]) if self.keep_images and images is not None else None, created)
                for i, (tid, vector) in enumerate(zip(ids, embeddings))]
        try:
            with self.transaction(write=True) as tx:
                if create:
                    tx.run("INSERT INTO subjects (id, metadata, created, modality) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (id) DO NOTHING", (subject_id, text, created, modality))
                row = tx.one("SELECT modality FROM subjects WHERE id = ?", (subject_id,))
                if row is None:
                    raise NotFound(f"subject {subject_id!r} not found", code="subject_not_found")
                check_modality(subject_id, row[0], modality, default_modality)
                version = self._bump(tx)
                for row in rows:
                    tx.run("INSERT INTO templates (id, subject_id, bundle_id, embedding, image, created, "
                           "added_version) VALUES (?, ?, ?, ?, ?, ?, ?)", row + (version,))
        except IntegrityConflict:  # the subject was deleted between the check and the insert
            raise NotFound(f"subject {subject_id!r} not found", code="subject_not_found") from None
        return ids

    @retried_read
    def subject_templates(self, subject_id):
        """(the subject's stored modality or None, {bundle_id: (K, D) float32}), read in one statement;
        NotFound when absent."""
        with self.transaction() as tx:
            rows = tx.all("SELECT s.modality, t.bundle_id, t.embedding FROM subjects s "
                          "LEFT JOIN templates t ON t.subject_id = s.id WHERE s.id = ? "
                          "ORDER BY t.added_version, t.id",
                          (subject_id,))
        if not rows:
            raise NotFound(f"subject {subject_id!r} not found", code="subject_not_found")
        grouped = {}
        for _, bundle_id, blob in rows:
            if bundle_id is not None:
                grouped.setdefault(bundle_id, []).append(blob)
        return rows[0][0], {bundle_id: embedding_matrix(blobs) for bundle_id, blobs in grouped.items()}

    @retried_read
    def gallery(self, bundle_id, after=-1, upto=None, *, modality=None, default_modality=None):
        """One bundle's templates written at versions in (after, upto], as (subject ids, template
        ids, (M, D) embeddings).

        Rows come grouped by subject, each subject's in the order `subject_templates` uses (so
        fused distances agree to the last bit). A cache loads everything up to the version it
        read (`upto`), then later only what came after it. With `modality`, only the templates of
        its subjects (a subject's modality never changes, so incremental refreshes stay right).
        """
        upto = (1 << 62) if upto is None else upto
        where, params = modality_filter(modality, default_modality)
        join = " JOIN subjects s ON s.id = t.subject_id" if where else ""
        with self.transaction() as tx:
            rows = tx.all(f"SELECT t.subject_id, t.id, t.embedding FROM templates t{join} WHERE t.bundle_id = ? "
                          f"AND t.added_version > ? AND t.added_version <= ?{where} "
                          "ORDER BY t.subject_id, t.added_version, t.id",
                          (bundle_id, after, upto, *params))
        return [r[0] for r in rows], [r[1] for r in rows], embedding_matrix([r[2] for r in rows])

    @retried_read
    def count_templates(self, bundle_id=None):
        with self.transaction() as tx:
            if bundle_id is None:
                return int(tx.one("SELECT COUNT(*) FROM templates")[0])
            return int(tx.one("SELECT COUNT(*) FROM templates WHERE bundle_id = ?", (bundle_id,))[0])

    @retried_read
    def stale_templates(self, bundle_id, *, modality=None, default_modality=None):
        """Templates made by another bundle: [(template id, subject id, its bundle, has image)].

        With `modality`, only those of its subjects: another modality's templates are not stale.
        """
        where, params = modality_filter(modality, default_modality)
        with self.transaction() as tx:
            rows = tx.all("SELECT t.id, t.subject_id, t.bundle_id, t.image IS NOT NULL FROM templates t "
                          f"JOIN subjects s ON s.id = t.subject_id WHERE t.bundle_id <> ?{where} "
                          "ORDER BY t.subject_id, t.id", (bundle_id, *params))
        return [(r[0], r[1], r[2], bool(r[3])) for r in rows]

    @retried_read
    def template_images(self, template_ids):
        """{template id: kept image bytes} for the given ids that kept one."""
        if not template_ids:
            return {}
        marks = ", ".join("?" for _ in template_ids)
        with self.transaction() as tx:
            rows = tx.all(f"SELECT id, image FROM templates WHERE id IN ({marks}) AND image IS NOT NULL",
                          tuple(template_ids))
        return {r[0]: bytes(r[1]) for r in rows}

    @retried_read
    def subject_image(self, subject_id, bundle_id):
        """A subject's first kept image, preferring `bundle_id`'s templates; None when none is kept.

        NotFound when the subject is absent. Only the chosen row's image is read.
        """
        with self.transaction() as tx:
            row = tx.one("SELECT s.id, (SELECT t.id FROM templates t WHERE t.subject_id = s.id "
                         "AND t.image IS NOT NULL ORDER BY CASE WHEN t.bundle_id = ? THEN 0 ELSE 1 END, "
                         "t.added_version, t.id LIMIT 1) FROM subjects s WHERE s.id = ?", (bundle_id, subject_id))
            if row is None:
                raise NotFound(f"subject {subject_id!r} not found", code="subject_not_found")
            if row[1] is None:
                return None
            return bytes(tx.one("SELECT image FROM templates WHERE id = ?", (row[1],))[0])

    def replace_embeddings(self, bundle_id, updates):
        """Re-tag templates with a new bundle's embeddings, all in one transaction.

        `updates` is [(template id, embedding)]; templates deleted meanwhile are skipped.
        Returns how many rows changed.
        """
        changed = 0
        with self.transaction(write=True) as tx:
            version = self._bump(tx, removal=True)
            for template_id, vector in updates:
                tx.run("UPDATE templates SET bundle_id = ?, embedding = ?, added_version = ? WHERE id = ?",
                       (bundle_id, embedding_bytes(vector), version, template_id))
                changed += tx.rowcount
        return changed

    # -- API keys ----------------------------------------------------------------------

    def add_key(self, name, key_hash, scope="write"):
        """Store a key's hash under a new id and mark auth enabled for good; returns its record (never the key)."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise VerifierError("a key needs a name of 1-200 characters", code="invalid_key_name")
        if scope not in KEY_SCOPES:
            raise VerifierError(f"a key's scope is one of {', '.join(KEY_SCOPES)}, got {scope!r}",
                                code="invalid_key_scope")
        key_id = uuid.uuid4().hex[:12]
        created = now()
        with self.transaction(write=True) as tx:
            tx.run("INSERT INTO api_keys (id, name, key_hash, created, scope) VALUES (?, ?, ?, ?, ?)",
                   (key_id, name, key_hash, created, scope))
            tx.run("INSERT INTO store_meta (name, value) VALUES ('auth_enabled', ?) ON CONFLICT (name) DO NOTHING",
                   (created,))
        return {"id": key_id, "name": name, "scope": scope, "created": created, "revoked": None}

    @retried_read
    def list_keys(self):
        with self.transaction() as tx:
            rows = tx.all("SELECT id, name, scope, created, revoked FROM api_keys ORDER BY created, id")
        return [{"id": r[0], "name": r[1], "scope": r[2], "created": r[3], "revoked": r[4]} for r in rows]

    def revoke_key(self, key_id):
        """Mark a key revoked (kept for the record); NotFound when no active key has that id."""
        with self.transaction(write=True) as tx:
            tx.run("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (now(), key_id))
            if tx.rowcount != 1:
                raise NotFound(f"no active API key with id {key_id!r}", code="key_not_found")

    @retried_read
    def key_status(self, key_hash):
        """(auth ever enabled, any active key, the scope of the active key `key_hash` or None), in one statement."""
        with self.transaction() as tx:
            row = tx.one("SELECT (SELECT COUNT(*) FROM store_meta WHERE name = 'auth_enabled'), "
                         "(SELECT COUNT(*) FROM api_keys WHERE revoked IS NULL), "
                         "(SELECT scope FROM api_keys WHERE key_hash = ? AND revoked IS NULL)", (key_hash or "",))
        return int(row[0]) > 0, int(row[1]) > 0, row[2]
