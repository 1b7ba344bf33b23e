"""The store's schema as an ordered list of migrations, in SQL both dialects accept.

`{blob}` stands for the dialect's byte-string type (BLOB in SQLite, BYTEA in PostgreSQL);
everything else is shared. A database records the last migration applied in
`schema_version`; opening a store applies the rest, in one transaction each, under a lock
so that several workers starting at once migrate only once. Never edit a released
migration: append a new one.
"""

MIGRATIONS = (
    # 1: subjects and their templates (embeddings tagged with the bundle that made them),
    #    and a change counter that per-worker caches compare against.
    (
        """CREATE TABLE subjects (
               id TEXT PRIMARY KEY,
               metadata TEXT NOT NULL,
               created TEXT NOT NULL)""",
        """CREATE TABLE templates (
               id TEXT PRIMARY KEY,
               subject_id TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
               bundle_id TEXT NOT NULL,
               embedding {blob} NOT NULL,
               created TEXT NOT NULL)""",
        "CREATE INDEX templates_subject ON templates (subject_id)",
        "CREATE INDEX templates_bundle ON templates (bundle_id, subject_id)",
        "CREATE TABLE store_state (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
        "INSERT INTO store_state (id, version) VALUES (1, 0)",
    ),
    # 2: optional kept images (so a new bundle can re-embed) and API keys (hashes only).
    (
        "ALTER TABLE templates ADD COLUMN image {blob}",
        """CREATE TABLE api_keys (
               id TEXT PRIMARY KEY,
               name TEXT NOT NULL,
               key_hash TEXT NOT NULL UNIQUE,
               created TEXT NOT NULL,
               revoked TEXT)""",
    ),
    # 3: incremental gallery refresh. Each template records the change-counter value of the
    #    transaction that wrote it (writers take the counter's row lock, so values follow
    #    commit order), and removals (deletes, re-embeds) have their own counter: a worker
    #    whose cache saw no removal appends only the newer rows instead of reloading all.
    (
        "ALTER TABLE templates ADD COLUMN added_version BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE store_state ADD COLUMN removals BIGINT NOT NULL DEFAULT 0",
        "CREATE INDEX templates_bundle_added ON templates (bundle_id, added_version)",
    ),
    # 4: key scopes (keys made before scopes could do everything: write) and a settings row
    #    `auth_enabled`, written with the first key and never removed, so revoking the last
    #    key leaves the protected routes closed instead of reopening them.
    (
        "ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'write'",
        "CREATE TABLE store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO store_meta (name, value) SELECT 'auth_enabled', created FROM api_keys "
        "ORDER BY created LIMIT 1",
    ),
    # 5: several bundles served at once: each subject belongs to the modality (`face`,
    #    `signature`, ...) that created it. Rows made before this migration keep NULL, which
    #    means the service's default (first) modality, so a store of one face bundle goes on
    #    working as it was; only subjects of that modality may hold NULL.
    (
        "ALTER TABLE subjects ADD COLUMN modality TEXT",
        "CREATE INDEX subjects_modality ON subjects (modality, id)",
    ),
)

LATEST = len(MIGRATIONS)


def migrate(tx, blob_type, target=LATEST):
    """Apply migrations up to `target` inside the caller's (locked) transaction; returns the new version."""
    tx.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = tx.one("SELECT version FROM schema_version")
    current = row[0] if row else 0
    if row is None:
        tx.run("INSERT INTO schema_version (version) VALUES (0)")
    if current > LATEST:
        return current
    for version in range(current + 1, target + 1):
        for statement in MIGRATIONS[version - 1]:
            tx.run(statement.format(blob=blob_type))
    if target > current:
        tx.run("UPDATE schema_version SET version = ?", (target,))
    return max(current, target)
