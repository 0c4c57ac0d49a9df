//! Durable state in SQLite: the host table (which upstreams exist, whether they are
//! dormant, how far we have read from each) and the event log (every event with its relay
//! sequence number: its kind tag and its body, the DAG-CBOR consumers are sent, as a BLOB),
//! the accounts' state (host, latest commit, hosting status; updated in the events'
//! transaction), with schema migrations.
//!
//! An event batch and the host cursors it advances are written in one transaction, so a
//! restart resumes each upstream exactly after the last event that was persisted: nothing
//! committed is lost and nothing is persisted twice (the sequencer drops what a host's
//! cursor already covers; the log has no index on the host's seq to say so again).
//!
//! Commits are durable before they return (unless `store.durable_commits` is off): WAL
//! with `synchronous = FULL`, so the WAL is synced at every commit and a power loss or OS crash cannot take back a commit whose
//! events were already broadcast (with `NORMAL`, the WAL is synced only at checkpoints, and
//! the relay sequence numbers of the lost commits would be handed to different events on
//! restart). The sequencer's group commit (up to `events.commit_batch_max` events per
//! transaction) keeps the cost to one sync per batch (BENCHMARKS.md, "Durable commits").
//!
//! SQLite is embedded (rusqlite, bundled), so a fresh machine needs nothing installed.
//! Calls are synchronous and usually short (single-row writes, one transaction per commit
//! batch). From async code they go through [`Store::call`], which runs them with
//! [`rt::blocking`]: a call that hangs (a full disk, a checkpoint's fsync, a lock held by
//! another process) blocks only its own task, never a runtime worker the probes need (the
//! determinism rules forbid `spawn_blocking`'s thread pool on behaviour paths). The
//! connection sits behind a mutex that no probe path touches: probes answer from atomics.

mod migrations;

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use crate::atproto::frame::Kind;
use crate::rt;
use crate::rt::fault::{self, Fault};

/// A host's persisted status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostStatus {
    /// Subscribed to (or being retried on the normal backoff schedule).
    Active,
    /// Failed too often in a row; its worker has exited; retried slowly by reconciliation.
    Dormant,
}

impl HostStatus {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Dormant => "dormant",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "active" => Ok(Self::Active),
            "dormant" => Ok(Self::Dormant),
            other => Err(StoreError::Corrupt(format!(
                "unknown host status {other:?}"
            ))),
        }
    }
}

/// One row of the host table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRow {
    /// Stable id (SQLite rowid).
    pub id: i64,
    /// The upstream's hostname, validated and lowercased.
    pub hostname: String,
    /// Active or dormant.
    pub status: HostStatus,
    /// Last upstream sequence number durably recorded.
    pub cursor: u64,
    /// Consecutive failed connection attempts when last persisted.
    pub consecutive_failures: u32,
}

/// An event on its way into the log (its relay sequence number is assigned by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// The relay sequence number.
    pub seq: u64,
    /// Which host sent it.
    pub host_id: i64,
    /// The host's own sequence number.
    pub upstream_seq: u64,
    /// The message type (stored as its tag, `#commit`…).
    pub kind: Kind,
    /// The body as consumers are sent it: canonical DAG-CBOR with the relay's seq in it.
    pub body: Bytes,
    /// What the event changes in its account's state, written in the same transaction
    /// (`None` for events read back from the log, which do not carry it).
    pub account: Option<AccountUpdate>,
}

/// What one event changes in the state of the account it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountUpdate {
    /// The account.
    pub did: String,
    /// What changes.
    pub change: AccountChange,
}

/// How an event changes its account's state. Every kind records the host it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountChange {
    /// `#commit` or `#sync`: the repository is now at `rev`, commit object `cid`.
    Commit {
        /// The commit's revision (a TID).
        rev: String,
        /// The commit object's CID, as text.
        cid: String,
    },
    /// `#account`: the hosting status (`status` `None` when active).
    Status {
        /// Whether the repository is served.
        active: bool,
        /// Why not, when it is not.
        status: Option<String>,
    },
    /// `#identity`: only that the account exists on that host.
    Seen,
}

/// One account's stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    /// The account's DID.
    pub did: String,
    /// The host its events last came from.
    pub host_id: i64,
    /// The latest commit's revision, once a `#commit` or `#sync` arrived.
    pub rev: Option<String>,
    /// The latest commit object's CID, with `rev`.
    pub commit_cid: Option<String>,
    /// Whether the repository is served (the last `#account` said so; true until one did).
    pub active: bool,
    /// Why not, when it is not.
    pub status: Option<String>,
}

impl NewEvent {
    /// What the event counts for in the log's byte account: its stored bytes (kind tag
    /// and body).
    pub fn content_bytes(&self) -> usize {
        self.kind.tag().len() + self.body.len()
    }
}

/// An event read back from the log.
pub type StoredEvent = NewEvent;

/// What one deletion removed from the event log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Events deleted.
    pub rows: usize,
    /// Their content bytes (kind tag + body).
    pub bytes: u64,
    /// The highest relay sequence number deleted (0 when none).
    pub last_seq: u64,
}

/// How much one read of the event log may return: at most `events` events and, past the
/// first, at most `bytes` of content (kind tag + body), so a page of large events stays small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Most events.
    pub events: usize,
    /// Most content bytes (the first event is returned whatever its size).
    pub bytes: usize,
}

impl Page {
    /// A page bounded by its event count only.
    pub fn events(events: usize) -> Self {
        Self {
            events,
            bytes: usize::MAX,
        }
    }
}

/// Why a store operation failed. Callers surface these (503, retry), never panic.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A fault injected by the wind tunnel (never happens outside simulation).
    #[error("database unavailable (injected fault)")]
    Injected,
    /// SQLite reported an error (I/O, locking, constraint).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database holds something this build cannot read.
    #[error("database content is invalid: {0}")]
    Corrupt(String),
    /// A value to be written does not fit the schema (a number past SQLite's integers).
    #[error("value cannot be stored: {0}")]
    Unstorable(String),
}

impl StoreError {
    /// Whether retrying the same write can never succeed because of what it carries (a
    /// value out of range, a constraint, a row too big), as opposed to the database being
    /// unavailable for now (I/O, busy, locked, full disk, an injected fault). A permanent
    /// error must not be retried: it would block every write queued behind it.
    pub fn is_permanent(&self) -> bool {
        use rusqlite::ErrorCode;
        match self {
            Self::Injected | Self::Corrupt(_) => false,
            Self::Unstorable(_) => true,
            Self::Sqlite(error) => match error {
                rusqlite::Error::ToSqlConversionFailure(_)
                | rusqlite::Error::IntegralValueOutOfRange(..) => true,
                rusqlite::Error::SqliteFailure(failure, _) => matches!(
                    failure.code,
                    ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch
                ),
                _ => false,
            },
        }
    }
}

/// The relay's SQLite database.
#[derive(Debug)]
pub struct Store {
    connection: Mutex<Connection>,
    /// Whether SQLite confirmed a synchronous level that syncs the WAL at every commit.
    commits_durable: bool,
}

impl Store {
    /// Open (creating if needed) the database at `path` with durable commits and bring its
    /// schema up to date. `:memory:` gives a private in-memory database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, true)
    }

    /// [`Store::open`], choosing whether commits are durable (`store.durable_commits`).
    pub fn open_with(path: &Path, durable_commits: bool) -> Result<Self, StoreError> {
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        let synchronous = if durable_commits { "FULL" } else { "NORMAL" };
        connection.pragma_update(None, "synchronous", synchronous)?;
        // Read back what SQLite runs with: 2 = FULL, 3 = EXTRA sync the WAL at every commit.
        let synchronous: i64 = connection.query_row("PRAGMA synchronous", [], |row| row.get(0))?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::apply(&mut connection)?;
        Ok(Self {
            connection: Mutex::new(connection),
            commits_durable: synchronous >= 2,
        })
    }

    /// Run `work` on the store from async code: through [`rt::blocking`], so a call a slow
    /// disk or a foreign lock keeps waiting does not take a runtime worker with it, and
    /// after the tunnel's `StoreStall` point (calls hang while it is on).
    pub async fn call<R>(&self, work: impl FnOnce(&Self) -> R) -> R {
        fault::hang_while(Fault::StoreStall).await;
        rt::blocking(|| work(self))
    }

    /// Whether a returned commit survives a power loss (the WAL is synced at every commit).
    pub fn commits_durable(&self) -> bool {
        self.commits_durable
    }

    /// Insert `hostname` if absent. Returns its id and whether it was created.
    pub fn add_host(&self, hostname: &str) -> Result<(i64, bool), StoreError> {
        let connection = self.lock();
        let inserted = connection.execute(
            "INSERT INTO hosts (hostname) VALUES (?1) ON CONFLICT (hostname) DO NOTHING",
            params![hostname],
        )?;
        let id: i64 = connection.query_row(
            "SELECT id FROM hosts WHERE hostname = ?1",
            params![hostname],
            |row| row.get(0),
        )?;
        Ok((id, inserted == 1))
    }

    /// Insert many hosts in one transaction (fixtures, imports). Existing names are kept.
    pub fn add_hosts<'a>(
        &self,
        hostnames: impl IntoIterator<Item = &'a str>,
    ) -> Result<usize, StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let mut inserted = 0;
        {
            let mut insert = transaction.prepare(
                "INSERT INTO hosts (hostname) VALUES (?1) ON CONFLICT (hostname) DO NOTHING",
            )?;
            for hostname in hostnames {
                inserted += insert.execute(params![hostname])?;
            }
        }
        transaction.commit()?;
        Ok(inserted)
    }

    /// Record a ban of `name`. Returns whether it was new.
    pub fn add_ban(&self, name: &str) -> Result<bool, StoreError> {
        let inserted = self.lock().execute(
            "INSERT INTO bans (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
            params![name],
        )?;
        Ok(inserted == 1)
    }

    /// Lift the ban of `name`. Returns whether there was one.
    pub fn remove_ban(&self, name: &str) -> Result<bool, StoreError> {
        let deleted = self
            .lock()
            .execute("DELETE FROM bans WHERE name = ?1", params![name])?;
        Ok(deleted == 1)
    }

    /// Every banned name, sorted.
    pub fn bans(&self) -> Result<Vec<String>, StoreError> {
        let connection = self.lock();
        let mut query = connection.prepare("SELECT name FROM bans ORDER BY name")?;
        let names = query.query_map([], |row| row.get(0))?;
        names.collect::<Result<_, _>>().map_err(StoreError::from)
    }

    /// Set host `host_id`'s own event limit (events a second, burst), or remove it (`None`).
    pub fn set_host_limit(
        &self,
        host_id: i64,
        limit: Option<(u32, u32)>,
    ) -> Result<(), StoreError> {
        let connection = self.lock();
        match limit {
            Some((per_second, burst)) => connection.execute(
                "INSERT INTO host_limits (host_id, events_per_second, events_burst) VALUES (?1, ?2, ?3)
                 ON CONFLICT (host_id) DO UPDATE SET events_per_second = ?2, events_burst = ?3",
                params![host_id, per_second, burst],
            )?,
            None => connection.execute("DELETE FROM host_limits WHERE host_id = ?1", params![host_id])?,
        };
        Ok(())
    }

    /// Every host's own event limit: (host id, events a second, burst), by host id.
    pub fn host_limits(&self) -> Result<Vec<(i64, u32, u32)>, StoreError> {
        let connection = self.lock();
        let mut query = connection.prepare(
            "SELECT host_id, events_per_second, events_burst FROM host_limits ORDER BY host_id",
        )?;
        let limits = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        limits.collect::<Result<_, _>>().map_err(StoreError::from)
    }

    /// Every host, by id.
    pub fn hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        let connection = self.lock();
        let mut query = connection.prepare(
            "SELECT id, hostname, status, cursor, consecutive_failures FROM hosts ORDER BY id",
        )?;
        let rows = query.query_map([], raw_row)?;
        rows.map(|raw| host_row(raw?)).collect()
    }

    /// One host by name.
    pub fn host(&self, hostname: &str) -> Result<Option<HostRow>, StoreError> {
        let raw = self
            .lock()
            .query_row(
                "SELECT id, hostname, status, cursor, consecutive_failures FROM hosts WHERE hostname = ?1",
                params![hostname],
                raw_row,
            )
            .optional()?;
        raw.map(host_row).transpose()
    }

    /// Persist a status change and the failure count that caused it.
    pub fn set_status(
        &self,
        id: i64,
        status: HostStatus,
        consecutive_failures: u32,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE hosts SET status = ?2, consecutive_failures = ?3 WHERE id = ?1",
            params![id, status.as_str(), consecutive_failures],
        )?;
        Ok(())
    }

    /// Append `events` and advance the cursors of their hosts, in one transaction.
    pub fn commit_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let mut connection = self.lock_for(Fault::StoreWrite)?;
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO events (seq, host_id, upstream_seq, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut advance = transaction
                .prepare_cached("UPDATE hosts SET cursor = MAX(cursor, ?2) WHERE id = ?1")?;
            let mut commit_account = transaction.prepare_cached(
                "INSERT INTO accounts (did, host_id, rev, commit_cid) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (did) DO UPDATE SET host_id = excluded.host_id, rev = excluded.rev, \
                 commit_cid = excluded.commit_cid",
            )?;
            let mut status_account = transaction.prepare_cached(
                "INSERT INTO accounts (did, host_id, active, status) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (did) DO UPDATE SET host_id = excluded.host_id, \
                 active = excluded.active, status = excluded.status",
            )?;
            let mut seen_account = transaction.prepare_cached(
                "INSERT INTO accounts (did, host_id) VALUES (?1, ?2) \
                 ON CONFLICT (did) DO UPDATE SET host_id = excluded.host_id",
            )?;
            // Each host's cursor is written once per batch, at its highest sequence number in it.
            let mut cursors = std::collections::BTreeMap::new();
            for event in events {
                let seq = to_sql(event.seq)?;
                let upstream_seq = to_sql(event.upstream_seq)?;
                insert.execute(params![
                    seq,
                    event.host_id,
                    upstream_seq,
                    event.kind.tag(),
                    &event.body[..]
                ])?;
                cursors
                    .entry(event.host_id)
                    .and_modify(|cursor: &mut i64| *cursor = (*cursor).max(upstream_seq))
                    .or_insert(upstream_seq);
                let Some(AccountUpdate { did, change }) = &event.account else {
                    continue;
                };
                match change {
                    AccountChange::Commit { rev, cid } => {
                        commit_account.execute(params![did, event.host_id, rev, cid])?
                    }
                    AccountChange::Status { active, status } => {
                        status_account.execute(params![did, event.host_id, active, status])?
                    }
                    AccountChange::Seen => seen_account.execute(params![did, event.host_id])?,
                };
            }
            for (host_id, cursor) in cursors {
                advance.execute(params![host_id, cursor])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Events with `seq > after`, in order, within `page` (at least one when there is one).
    pub fn events_after(&self, after: u64, page: Page) -> Result<Vec<StoredEvent>, StoreError> {
        let connection = self.lock_for(Fault::StoreRead)?;
        let mut query = connection.prepare_cached(
            "SELECT seq, host_id, upstream_seq, kind, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let limit = i64::try_from(page.events).unwrap_or(i64::MAX);
        let rows = query.query_map(params![to_sql(after)?, limit], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        let mut events = Vec::new();
        let mut bytes = 0usize;
        for raw in rows {
            let (seq, host_id, upstream_seq, kind, body) = raw?;
            bytes = bytes.saturating_add(kind.len() + body.len());
            if !events.is_empty() && bytes > page.bytes {
                break;
            }
            let kind = Kind::from_tag(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("event {seq} has kind {kind:?}")))?;
            events.push(StoredEvent {
                seq: from_sql(seq)?,
                host_id,
                upstream_seq: from_sql(upstream_seq)?,
                kind,
                body: Bytes::from(body),
                account: None,
            });
        }
        Ok(events)
    }

    /// One account's state (`None`: no event about it has been stored).
    pub fn account(&self, did: &str) -> Result<Option<AccountRow>, StoreError> {
        let connection = self.lock_for(Fault::StoreRead)?;
        let mut query = connection.prepare_cached(&format!("{ACCOUNT_COLUMNS} WHERE did = ?1"))?;
        Ok(query.query_row(params![did], account_row).optional()?)
    }

    /// Up to `limit` accounts with a commit, in DID order, after `after` (from the first
    /// when `None`).
    pub fn accounts_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AccountRow>, StoreError> {
        let connection = self.lock_for(Fault::StoreRead)?;
        let mut query = connection.prepare_cached(&format!(
            "{ACCOUNT_COLUMNS} WHERE did > ?1 AND rev IS NOT NULL ORDER BY did LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = query.query_map(params![after.unwrap_or(""), limit], account_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every account's latest revision (what the sequencer compares new commits with).
    pub fn account_revs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let connection = self.lock_for(Fault::StoreRead)?;
        let mut query =
            connection.prepare_cached("SELECT did, rev FROM accounts WHERE rev IS NOT NULL")?;
        let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The lowest and highest relay sequence numbers in the log (`None` when it is empty).
    pub fn event_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let connection = self.lock_for(Fault::StoreRead)?;
        let (low, high): (Option<i64>, Option<i64>) =
            connection.query_row("SELECT MIN(seq), MAX(seq) FROM events", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
        match (low, high) {
            (Some(low), Some(high)) => Ok(Some((from_sql(low)?, from_sql(high)?))),
            _ => Ok(None),
        }
    }

    /// Delete up to `limit` of the oldest events with `seq < below`. Returns what went.
    pub fn delete_events_below(&self, below: u64, limit: usize) -> Result<Deleted, StoreError> {
        let connection = self.lock_for(Fault::StoreWrite)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut statement = connection.prepare_cached(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq < ?1 ORDER BY seq LIMIT ?2) \
             RETURNING seq, length(CAST(kind AS BLOB)) + length(CAST(body AS BLOB))",
        )?;
        let rows = statement.query_map(params![to_sql(below)?, limit], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut deleted = Deleted::default();
        for row in rows {
            let (seq, bytes) = row?;
            deleted.rows += 1;
            deleted.bytes += u64::try_from(bytes).unwrap_or(0);
            deleted.last_seq = deleted.last_seq.max(from_sql(seq)?);
        }
        Ok(deleted)
    }

    /// The content bytes (kind tag + body) of every event in the log: what
    /// `events.retention_bytes_max` bounds. Reads the whole log; called once at open.
    pub fn event_bytes(&self) -> Result<u64, StoreError> {
        let connection = self.lock_for(Fault::StoreRead)?;
        let bytes: i64 = connection.query_row(
            "SELECT COALESCE(SUM(length(CAST(kind AS BLOB)) + length(CAST(body AS BLOB))), 0) FROM events",
            [],
            |row| row.get(0),
        )?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    fn lock_for(&self, point: Fault) -> Result<MutexGuard<'_, Connection>, StoreError> {
        if fault::active(point) {
            return Err(StoreError::Injected);
        }
        Ok(self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (statements are
        // atomic, transactions roll back on drop), so a poisoned lock is still usable.
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The account columns, in [`account_row`]'s order.
const ACCOUNT_COLUMNS: &str = "SELECT did, host_id, rev, commit_cid, active, status FROM accounts";

fn account_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        did: row.get(0)?,
        host_id: row.get(1)?,
        rev: row.get(2)?,
        commit_cid: row.get(3)?,
        active: row.get(4)?,
        status: row.get(5)?,
    })
}

fn to_sql(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Unstorable(format!("{value} overflows a SQLite integer")))
}

fn from_sql(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative sequence {value}")))
}

type RawRow = (i64, String, String, i64, i64);

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn host_row((id, hostname, status, cursor, failures): RawRow) -> Result<HostRow, StoreError> {
    Ok(HostRow {
        id,
        hostname,
        status: HostStatus::parse(&status)?,
        cursor: u64::try_from(cursor)
            .map_err(|_| StoreError::Corrupt(format!("negative cursor {cursor}")))?,
        consecutive_failures: u32::try_from(failures).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests;
