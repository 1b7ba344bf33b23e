"""SQLite dialect: one file, WAL so readers never wait for a writer, foreign keys on.

Writes take the database lock at BEGIN (BEGIN IMMEDIATE) so two enrollments never
deadlock upgrading a read lock; a busy writer is waited for up to `BUSY_TIMEOUT_S`.
synchronous=FULL: a committed enrollment survives a power cut, not only a killed process.
A new database file is created 0600 (templates, kept images and key hashes are private);
SQLite gives its -wal and -shm files the database file's mode.
"""

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from verifier.enrollment.store.base import SqlStore
from verifier.enrollment.store.errors import StoreUnavailable

BUSY_TIMEOUT_S = 30
FILE_MODE = 0o600


def path_from_url(url):
    """sqlite:///relative/path or sqlite:////absolute/path (the SQLAlchemy spelling) -> a Path."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise StoreUnavailable("bad SQLite URL", detail=f"bad SQLite URL {url!r}: use sqlite:///PATH "
                                                       "(sqlite:////abs/path for an absolute path)")
    return Path(url[len(prefix):])


class SqliteStore(SqlStore):
    dialect = "sqlite"
    blob_type = "BLOB"
    placeholder = "?"
    integrity_errors = (sqlite3.IntegrityError,)
    connection_errors = (sqlite3.OperationalError, sqlite3.DatabaseError)

    def __init__(self, url, *, create=True, **options):
        super().__init__(url, **options)
        self.path = path_from_url(url)
        self.create = create  # whether a missing file may be made; only until the first connection

    def describe(self):
        return f"sqlite:///{self.path}"

    def _connect(self):
        directory = self.path.parent
        if not directory.is_dir():
            raise StoreUnavailable("the directory of the database does not exist",
                                   detail=f"the directory of the SQLite database does not exist: {directory} "
                                          f"(create it, or point DATABASE_URL elsewhere)")
        try:
            if not self.create and not self.path.exists():  # moved or deleted: never a new, empty store
                raise StoreUnavailable("the database file does not exist",
                                       detail=f"the SQLite database {self.path} does not exist (moved or deleted?)")
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE))  # 0600 if new; kept as is if not
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable("the database cannot be opened",
                                   detail=f"cannot open SQLite database {self.path}: {exc}") from None
        self.create = False  # opened once: if the file goes away later, other threads must not recreate it
        self._local.file_id = self._file_id()
        return conn

    def _file_id(self):
        """(device, inode) of the file at the store's path now, or None when there is none."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _connection(self):
        """This thread's connection, while the file at the path is still the one it opened (else a 503).

        An open connection keeps writing to a file moved away (and to the -wal left at the old path),
        so each transaction first checks that the path still names that file; once it is back, it serves.
        """
        conn = super()._connection()
        if self._file_id() != getattr(self._local, "file_id", None):
            self._drop_connection()
            raise StoreUnavailable("the database file was moved or replaced",
                                   detail=f"the SQLite database {self.path} was moved, replaced or deleted "
                                          "while the service had it open")
        return conn

    @contextmanager
    def _begin(self, conn, write, exclusive):
        cursor = conn.cursor()
        cursor.execute("BEGIN IMMEDIATE" if write or exclusive else "BEGIN")
        try:
            yield cursor
            cursor.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # never leave a half-open transaction on a reused connection
                cursor.execute("ROLLBACK")
            raise
