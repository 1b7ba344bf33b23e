"""The enrollment store: subjects, their templates and API keys, in SQLite or PostgreSQL.

    open_store("sqlite:///verifier.db")                      one file (the default)
    open_store("postgresql://user:pass@host:5432/verifier")  shared by many workers/machines

`open_store` connects and applies pending migrations, so a clear error (a missing
directory, an unreachable server) comes at start-up rather than at the first request.
Submodules never import this package (only each other), so nothing here is read half-built.
"""

from verifier.enrollment.store.base import (MAX_PAGE, PAGE_SIZE, SUBJECT_ID_PATTERN, SqlStore, check_metadata,
                                            check_page_limit, check_subject_id)
from verifier.enrollment.store.errors import Conflict, IntegrityConflict, NotFound, StoreUnavailable
from verifier.enrollment.store.urls import mask_url

DEFAULT_URL = "sqlite:///verifier.db"

__all__ = ["Conflict", "DEFAULT_URL", "IntegrityConflict", "MAX_PAGE", "NotFound", "PAGE_SIZE", "SUBJECT_ID_PATTERN",
           "SqlStore", "StoreUnavailable", "check_metadata", "check_page_limit", "check_subject_id", "mask_url",
           "open_store"]


def open_store(url=None, *, keep_images=False, migrate=True, create=True):
    """A store for `url` (default `DEFAULT_URL`), migrated to the latest schema unless told not to.

    `create=False`: a missing SQLite file is a StoreUnavailable, never a new empty store.
    """
    url = url or DEFAULT_URL
    options = {}
    if url.startswith("sqlite:"):
        from verifier.enrollment.store.sqlite import SqliteStore as cls
        options = {"create": create}
    elif url.startswith(("postgresql:", "postgres:")):
        from verifier.enrollment.store.postgres import PostgresStore as cls
    else:
        raise StoreUnavailable("unsupported DATABASE_URL scheme",
                               detail=f"unsupported DATABASE_URL {url.split(':', 1)[0]!r}: "
                                      "use sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB")
    store = cls(url, keep_images=keep_images, **options)
    if migrate:
        store.migrate()
    return store
