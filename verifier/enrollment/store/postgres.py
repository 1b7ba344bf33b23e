"""PostgreSQL dialect (psycopg 3): one store shared by every worker on every machine.

Each thread holds one autocommit connection and wraps each operation in an explicit
transaction. Migrations take a transaction-scoped advisory lock so that workers starting
together apply them once. A lost connection is dropped and reopened on the next call.
"""

from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict

from verifier.enrollment.store.base import SqlStore
from verifier.enrollment.store.errors import StoreUnavailable

CONNECT_TIMEOUT_S = 5
MIGRATION_LOCK = 0x5653_7431  # any constant; names this application's migration lock


class PostgresStore(SqlStore):
    dialect = "postgresql"
    blob_type = "BYTEA"
    placeholder = "%s"
    integrity_errors = (psycopg.errors.IntegrityError,)
    connection_errors = (psycopg.OperationalError, psycopg.InterfaceError)

    def describe(self):
        try:
            info = conninfo_to_dict(self.url)
        except psycopg.ProgrammingError:
            return "postgresql (unparsable URL)"
        return (f"postgresql://{info.get('host', 'localhost')}:{info.get('port', 5432)}"
                f"/{info.get('dbname', '')}")

    def _connect(self):
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {self.describe()}: {reason}") from None

    @contextmanager
    def _begin(self, conn, write, exclusive):
        with conn.transaction(), conn.cursor() as cursor:
            if exclusive:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            yield cursor
