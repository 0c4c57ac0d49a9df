//! Store behaviour against a real SQLite database in a temporary file.

use super::*;

fn temp_db(name: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("relay-store-{}-{name}.sqlite", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

#[test]
fn hosts_round_trip_and_survive_reopen() {
    let path = temp_db("reopen");
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.add_host("a.example").unwrap(), (1, true));
        assert_eq!(store.add_host("a.example").unwrap(), (1, false));
        assert_eq!(
            store
                .add_hosts(["b.example", "a.example", "c.example"])
                .unwrap(),
            2
        );
        // A host's cursor is written once per batch: its highest sequence number there.
        store
            .commit_events(&[event(1, 1, 10), event(2, 2, 5), event(3, 1, 9)])
            .unwrap();
        store.commit_events(&[event(4, 1, 7)]).unwrap();
        store.set_status(3, HostStatus::Dormant, 15).unwrap();
    }
    let store = Store::open(&path).unwrap();
    let hosts = store.hosts().unwrap();
    assert_eq!(hosts.len(), 3);
    assert_eq!(hosts[0].cursor, 10, "cursors never move backwards");
    assert_eq!(hosts[1].cursor, 5);
    assert_eq!(
        (hosts[2].status, hosts[2].consecutive_failures),
        (HostStatus::Dormant, 15)
    );
    assert_eq!(store.host("b.example").unwrap().unwrap().id, 2);
    assert_eq!(store.host("nope.example").unwrap(), None);
}

#[test]
fn a_newer_schema_is_refused() {
    let path = temp_db("newer");
    {
        let connection = Connection::open(&path).unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
    }
    let error = Store::open(&path).unwrap_err().to_string();
    assert_eq!(
        error,
        "database content is invalid: schema version 99 is newer than this build's 6"
    );
}

/// A database an older build left: schema `version`, holding what `rows` inserts.
fn database_at_version(name: &str, version: usize, rows: &str) -> std::path::PathBuf {
    let path = temp_db(name);
    let mut connection = Connection::open(&path).unwrap();
    let transaction = connection.transaction().unwrap();
    for migration in &super::migrations::MIGRATIONS[..version] {
        transaction.execute_batch(migration).unwrap();
    }
    transaction.execute_batch(rows).unwrap();
    transaction
        .pragma_update(None, "user_version", version)
        .unwrap();
    transaction.commit().unwrap();
    path
}

#[test]
fn the_log_keeps_its_events_when_its_dedup_index_is_dropped() {
    let path = database_at_version(
        "dedup_index",
        5,
        "INSERT INTO hosts (hostname, cursor) VALUES ('a.example', 8);
         INSERT INTO events VALUES (1, 1, 7, '#identity', x'a0');
         INSERT INTO events VALUES (2, 1, 8, '#account', x'a1');",
    );
    let store = Store::open(&path).unwrap();
    let kept = store.events_after(0, Page::events(10)).unwrap();
    assert_eq!(
        kept.iter()
            .map(|event| (event.seq, event.upstream_seq, event.kind, &event.body[..]))
            .collect::<Vec<_>>(),
        [
            (1, 7, Kind::Identity, &b"\xa0"[..]),
            (2, 8, Kind::Account, &b"\xa1"[..])
        ]
    );
    assert_eq!(store.hosts().unwrap()[0].cursor, 8);
    let indexes: i64 = store
        .lock()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'events'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0, "the log has no index but its seq");
    store.commit_events(&[event(3, 1, 9)]).unwrap();
    assert_eq!(store.event_bounds().unwrap(), Some((1, 3)));
}

#[test]
fn the_json_era_log_is_dropped_and_the_host_cursors_reset() {
    let path = database_at_version(
        "json_era",
        3,
        "INSERT INTO hosts (hostname, cursor) VALUES ('a.example', 7);
         INSERT INTO events VALUES (1, 1, 7, 'post', '{\"n\":7}');",
    );
    let store = Store::open(&path).unwrap();
    assert_eq!(store.event_bounds().unwrap(), None);
    assert_eq!(store.hosts().unwrap()[0].cursor, 0);
    store.commit_events(&[event(1, 1, 1)]).unwrap();
    assert_eq!(
        store.events_after(0, Page::events(1)).unwrap(),
        [event(1, 1, 1)]
    );
}

fn event(seq: u64, host_id: i64, upstream_seq: u64) -> NewEvent {
    NewEvent {
        seq,
        host_id,
        upstream_seq,
        kind: Kind::Identity,
        body: Bytes::from(format!("{{\"n\":{upstream_seq}}}")),
        account: None,
    }
}

#[test]
fn a_failed_batch_leaves_nothing_behind() {
    let store = Store::open(&temp_db("atomic")).unwrap();
    store.add_hosts(["a.example"]).unwrap();
    store.commit_events(&[event(1, 1, 1)]).unwrap();
    // seq 2 is fine but seq 1 is already in the log: the whole batch fails.
    let error = store
        .commit_events(&[event(2, 1, 2), event(1, 1, 3)])
        .unwrap_err();
    assert!(error.to_string().contains("UNIQUE"), "{error}");
    assert_eq!(store.event_bounds().unwrap(), Some((1, 1)));
    assert_eq!(store.hosts().unwrap()[0].cursor, 1);
}

#[test]
fn events_page_in_order_and_retention_deletes_the_oldest_in_batches() {
    let store = Store::open(&temp_db("paging")).unwrap();
    store.add_hosts(["a.example", "b.example"]).unwrap();
    let batch: Vec<NewEvent> = (1..=10)
        .map(|seq| event(seq, 1 + (seq % 2) as i64, seq))
        .collect();
    store.commit_events(&batch).unwrap();
    let page = store.events_after(3, Page::events(4)).unwrap();
    assert_eq!(
        page.iter().map(|event| event.seq).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert_eq!(page[0], batch[3]);
    let one = batch[0].content_bytes() as u64;
    assert_eq!(
        store.event_bytes().unwrap(),
        10 * one + 1,
        "seq 10's body has two digits"
    );
    let deleted = |rows: usize, last_seq: u64| Deleted {
        rows,
        bytes: rows as u64 * one,
        last_seq,
    };
    assert_eq!(store.delete_events_below(8, 3).unwrap(), deleted(3, 3));
    assert_eq!(store.delete_events_below(8, 3).unwrap(), deleted(3, 6));
    assert_eq!(store.delete_events_below(8, 3).unwrap(), deleted(1, 7));
    assert_eq!(store.delete_events_below(8, 3).unwrap(), Deleted::default());
    assert_eq!(store.event_bounds().unwrap(), Some((8, 10)));
    assert_eq!(store.event_bytes().unwrap(), 3 * one + 1);
}

#[test]
fn a_page_stops_at_its_byte_bound_but_always_holds_one_event() {
    let store = Store::open(Path::new(":memory:")).unwrap();
    let (host, _) = store.add_host("a.example").unwrap();
    let batch: Vec<NewEvent> = (1..=6).map(|seq| event(seq, host, seq)).collect();
    store.commit_events(&batch).unwrap();
    let one = batch[0].content_bytes();
    let seqs = |page: Page| -> Vec<u64> {
        store
            .events_after(0, page)
            .unwrap()
            .iter()
            .map(|event| event.seq)
            .collect()
    };
    assert_eq!(
        seqs(Page {
            events: 10,
            bytes: 3 * one
        }),
        [1, 2, 3]
    );
    assert_eq!(
        seqs(Page {
            events: 2,
            bytes: 3 * one
        }),
        [1, 2]
    );
    assert_eq!(
        seqs(Page {
            events: 10,
            bytes: 1
        }),
        [1],
        "an event larger than the page still goes out, alone"
    );
}

#[test]
fn the_edges_largest_upstream_seq_is_storable_and_one_more_is_a_permanent_error() {
    // In memory, as the upstream_frame fuzz target commits every frame the edge accepts.
    let store = Store::open(Path::new(":memory:")).unwrap();
    let (host, _) = store.add_host("a.example").unwrap();
    let largest = crate::upstream::MAX_UPSTREAM_SEQ;
    store.commit_events(&[event(1, host, largest)]).unwrap();
    assert_eq!(
        store.events_after(0, Page::events(2)).unwrap(),
        [event(1, host, largest)]
    );
    let refused = store
        .commit_events(&[event(2, host, largest + 1)])
        .unwrap_err();
    assert!(refused.is_permanent(), "{refused}");
    assert!(!StoreError::Injected.is_permanent());
    assert_eq!(store.delete_events_below(2, 1).unwrap().rows, 1);
}

#[test]
fn commits_are_durable_in_wal_with_a_sync_per_commit() {
    let path = temp_db("durable");
    let store = Store::open(&path).unwrap();
    assert!(store.commits_durable(), "synchronous = FULL (or EXTRA)");
    let connection = store.lock();
    let journal: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

#[test]
fn durable_commits_can_be_turned_off() {
    let path = temp_db("normal");
    let store = Store::open_with(&path, false).unwrap();
    assert!(!store.commits_durable(), "synchronous = NORMAL");
}

#[test]
fn bans_are_added_once_listed_sorted_lifted_and_survive_reopen() {
    let path = temp_db("bans");
    {
        let store = Store::open(&path).unwrap();
        assert!(store.add_ban("spam.example").unwrap());
        assert!(!store.add_ban("spam.example").unwrap(), "already banned");
        assert!(store.add_ban("abuse.example").unwrap());
        assert!(store.add_ban("gone.example").unwrap());
        assert!(store.remove_ban("gone.example").unwrap());
        assert!(!store.remove_ban("gone.example").unwrap(), "no such ban");
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.bans().unwrap(), ["abuse.example", "spam.example"]);
}

#[test]
fn host_limits_are_set_replaced_removed_and_survive_reopen() {
    let path = temp_db("host_limits");
    {
        let store = Store::open(&path).unwrap();
        store.add_hosts(["a.example", "b.example"]).unwrap();
        store.set_host_limit(2, Some((5, 10))).unwrap();
        store.set_host_limit(1, Some((1, 1))).unwrap();
        store.set_host_limit(1, Some((3, 4))).unwrap();
        assert_eq!(store.host_limits().unwrap(), [(1, 3, 4), (2, 5, 10)]);
        store.set_host_limit(2, None).unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.host_limits().unwrap(), [(1, 3, 4)]);
}

#[test]
fn accounts_are_written_with_their_events_and_read_back() {
    let store = Store::open(Path::new(":memory:")).unwrap();
    let (host, _) = store.add_host("a.example").unwrap();
    let with = |seq: u64, did: &str, change: AccountChange| NewEvent {
        account: Some(AccountUpdate {
            did: did.to_owned(),
            change,
        }),
        ..event(seq, host, seq)
    };
    let commit = |rev: &str| AccountChange::Commit {
        rev: rev.to_owned(),
        cid: format!("cid-{rev}"),
    };
    store
        .commit_events(&[
            with(1, "did:plc:b", commit("3aaaaaaaaaaa2")),
            with(2, "did:plc:a", commit("3aaaaaaaaaaa2")),
            with(3, "did:plc:a", commit("3aaaaaaaaaab2")),
            with(4, "did:plc:c", AccountChange::Seen),
            with(
                5,
                "did:plc:b",
                AccountChange::Status {
                    active: false,
                    status: Some("takendown".to_owned()),
                },
            ),
        ])
        .unwrap();
    assert_eq!(
        store.account("did:plc:a").unwrap(),
        Some(AccountRow {
            did: "did:plc:a".to_owned(),
            host_id: host,
            rev: Some("3aaaaaaaaaab2".to_owned()),
            commit_cid: Some("cid-3aaaaaaaaaab2".to_owned()),
            active: true,
            status: None,
        })
    );
    let b = store.account("did:plc:b").unwrap().unwrap();
    assert_eq!(
        (b.rev.as_deref(), b.active, b.status.as_deref()),
        (Some("3aaaaaaaaaaa2"), false, Some("takendown"))
    );
    let c = store.account("did:plc:c").unwrap().unwrap();
    assert_eq!((c.rev, c.active), (None, true));
    assert_eq!(store.account("did:plc:d").unwrap(), None);
    let dids = |after: Option<&str>, limit: usize| -> Vec<String> {
        store
            .accounts_after(after, limit)
            .unwrap()
            .into_iter()
            .map(|account| account.did)
            .collect()
    };
    assert_eq!(
        dids(None, 10),
        ["did:plc:a", "did:plc:b"],
        "c has no commit"
    );
    assert_eq!(dids(None, 1), ["did:plc:a"]);
    assert_eq!(dids(Some("did:plc:a"), 10), ["did:plc:b"]);
    let mut revs = store.account_revs().unwrap();
    revs.sort();
    assert_eq!(
        revs,
        [
            ("did:plc:a".to_owned(), "3aaaaaaaaaab2".to_owned()),
            ("did:plc:b".to_owned(), "3aaaaaaaaaaa2".to_owned())
        ]
    );
    // A batch that fails (its second event repeats seq 6) leaves the accounts as they were.
    assert!(store
        .commit_events(&[
            with(6, "did:plc:d", AccountChange::Seen),
            event(6, host, 99)
        ])
        .is_err());
    assert_eq!(store.account("did:plc:d").unwrap(), None);
}
