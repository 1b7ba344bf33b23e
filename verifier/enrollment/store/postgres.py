"""PostgreSQL dialect (psycopg 3): one store shared by every worker on every machine.

Each thread holds one autocommit connection and wraps each operation in an explicit
transaction. Migrations take a transaction-scoped advisory lock so that workers starting
together apply them once. A lost connection is dropped and reopened on the next call (a
read is retried once on a fresh one). No call waits forever: each statement is cut after
`STATEMENT_TIMEOUT_S` by the server, TCP keepalives plus `tcp_user_timeout` notice a peer
that vanished, and a server that is frozen (its kernel still acknowledges TCP) is given up
on by the client `CLIENT_MARGIN_S` after the statement timeout, dropping the connection. Any libpq parameter in the URL (e.g. `?options=-c statement_timeout=30s`,
`&keepalives_idle=60`) overrides these defaults.
"""

import re
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict

from verifier.enrollment.store.base import SqlStore
from verifier.enrollment.store.errors import StoreUnavailable

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_S = 5
CLIENT_MARGIN_S = 5  # the client gives up this long after the server should have cut a statement
TIMEOUT_UNITS = {"": 0.001, "ms": 0.001, "s": 1, "min": 60, "h": 3600}
MIGRATION_LOCK = 0x5653_7431  # any constant; names this application's migration lock
# libpq defaults: idle 10 s, then a probe every 5 s, 3 lost = dead; unacknowledged data for 10 s = dead.
CONNECTION_DEFAULTS = {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 10,
                       "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 10_000}


def connection_parameters(url):
    """libpq parameters for `url`: its own, over the defaults, with statement_timeout added to `options`."""
    params = {**CONNECTION_DEFAULTS, **conninfo_to_dict(url)}
    options = params.get("options", "")
    if "statement_timeout" not in options:
        params["options"] = f"{options} -c statement_timeout={STATEMENT_TIMEOUT_S * 1000}".strip()
    return params


def client_deadline(params):
    """Seconds the client waits for one step: the statement timeout plus a margin (None if it is off)."""
    match = re.search(r"statement_timeout\s*=\s*(\d+)\s*(ms|s|min|h)?\b", params.get("options", ""))
    if match is None:
        return None
    seconds = int(match[1]) * TIMEOUT_UNITS[match[2] or ""]
    return seconds + CLIENT_MARGIN_S if seconds else None


class DeadlineConnection(psycopg.Connection):
    """A connection that waits for its server at most `deadline_s` per step (then an OperationalError)."""

    deadline_s = None

    def wait(self, gen, *args, **kwargs):
        if len(args) < 2:  # no timeout given: ours
            kwargs.setdefault("timeout", self.deadline_s)
        return super().wait(gen, *args, **kwargs)


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
            params = connection_parameters(self.url)
            conn = DeadlineConnection.connect(autocommit=True, **params)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable("cannot connect to the database",
                                   detail=f"cannot connect to PostgreSQL at {self.describe()}: {reason}") from None
        conn.deadline_s = client_deadline(params)
        return conn

    @staticmethod
    def _lost(conn):
        return conn.broken or conn.closed

    @contextmanager
    def _begin(self, conn, write, exclusive):
        with conn.transaction(), conn.cursor() as cursor:
            if exclusive:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            yield cursor
