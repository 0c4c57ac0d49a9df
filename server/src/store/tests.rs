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
        store.flush_cursors(&[(1, 10), (2, 5)]).unwrap();
        store.flush_cursors(&[(1, 7)]).unwrap();
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
        "database content is invalid: schema version 99 is newer than this build's 1"
    );
}
