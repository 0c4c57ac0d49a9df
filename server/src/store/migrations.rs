//! Schema migrations, applied in order and recorded in SQLite's `user_version`, so an old
//! database is upgraded in place and a database from a newer build is refused, not misread.
//!
//! Migration 4 moved the event log from the private JSON protocol to atproto's event
//! stream: `kind` holds the message tag (`#commit`, `#sync`, `#identity`, `#account`) and
//! `body` the DAG-CBOR body (a BLOB) with the relay's seq in it. Events the old protocol
//! wrote cannot be served as frames, so the migration **drops them** and **resets every
//! host's cursor to 0**: the cursors counted the old protocol's sequence numbers, which
//! mean nothing to a host speaking the new one. After the upgrade the relay's sequence
//! starts again at 1 and each host is read from the start of what it still serves.
//!
//! Migration 6 dropped the event log's `UNIQUE (host_id, upstream_seq)` index. It never
//! decided anything: the sequencer drops every event at or below its host's cursor, and the
//! cursor is written in the same transaction as the events that move it, so a duplicate
//! never reaches a commit. It did cost every event one more B-tree page written to the WAL
//! and again at the checkpoint (one of about four; BENCHMARKS.md, "One decode, no dedup
//! index"). The migration copies the log once, which takes as long as the log is big.

use rusqlite::Connection;

use super::StoreError;

/// Each entry upgrades the schema from version `index` to `index + 1`. Append only.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the host table.
    "CREATE TABLE hosts (
        id INTEGER PRIMARY KEY,
        hostname TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'dormant')),
        cursor INTEGER NOT NULL DEFAULT 0 CHECK (cursor >= 0),
        consecutive_failures INTEGER NOT NULL DEFAULT 0
    );",
    // 2: the event log. `seq` is the relay's own sequence; (host, upstream_seq) is unique
    // so an event can never be persisted twice (until migration 6).
    "CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        host_id INTEGER NOT NULL,
        upstream_seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (host_id, upstream_seq)
    );",
    // 3: banned names (a name bans itself and every name under it) and per-host event
    // limits, both set by the admin API.
    "CREATE TABLE bans (
        name TEXT PRIMARY KEY
    );
    CREATE TABLE host_limits (
        host_id INTEGER PRIMARY KEY REFERENCES hosts (id),
        events_per_second INTEGER NOT NULL CHECK (events_per_second >= 0),
        events_burst INTEGER NOT NULL CHECK (events_burst >= 0)
    );",
    // 4: the event log speaks atproto (see the module docs): the old protocol's events are
    // dropped and the host cursors reset with them.
    "DROP TABLE events;
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        host_id INTEGER NOT NULL,
        upstream_seq INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('#commit', '#sync', '#identity', '#account')),
        body BLOB NOT NULL,
        UNIQUE (host_id, upstream_seq)
    );
    UPDATE hosts SET cursor = 0;",
    // 5: per-account state, written in the same transaction as the events that change it:
    // the host the account's events last came from, its latest commit (rev and commit CID,
    // from `#commit` and `#sync`), and its hosting status (from `#account`).
    "CREATE TABLE accounts (
        did TEXT PRIMARY KEY,
        host_id INTEGER NOT NULL,
        rev TEXT,
        commit_cid TEXT,
        active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
        status TEXT
    ) WITHOUT ROWID;",
    // 6: the event log without its UNIQUE (host_id, upstream_seq) index (see the module
    // docs): the table is rebuilt, as SQLite drops a constraint, its rows kept.
    "CREATE TABLE events_without_index (
        seq INTEGER PRIMARY KEY,
        host_id INTEGER NOT NULL,
        upstream_seq INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('#commit', '#sync', '#identity', '#account')),
        body BLOB NOT NULL
    );
    INSERT INTO events_without_index (seq, host_id, upstream_seq, kind, body)
        SELECT seq, host_id, upstream_seq, kind, body FROM events;
    DROP TABLE events;
    ALTER TABLE events_without_index RENAME TO events;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Bring `connection` up to [`SCHEMA_VERSION`] in one transaction.
pub fn apply(connection: &mut Connection) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    let current: usize = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "schema version {current} is newer than this build's {SCHEMA_VERSION}"
        )));
    }
    for (version, migration) in MIGRATIONS.iter().enumerate().skip(current) {
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", version + 1)?;
    }
    transaction.commit()?;
    Ok(())
}
