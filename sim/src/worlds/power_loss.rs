//! What a power loss leaves of the relay's database (the `power_loss` fault).
//!
//! SQLite in WAL mode writes commits to `<db>-wal` and copies them into the database file
//! at checkpoints. With `synchronous = FULL` the WAL is synced at every commit, so a commit
//! that returned is on the disk; with `NORMAL` it is synced only before a checkpoint, so
//! what the WAL gained since the last checkpoint may be gone after a power loss. The model
//! takes the worst case the relay's setting allows: at the instant of the loss the disk
//! holds the database file as written, and the WAL as written only if the relay reports
//! its commits durable (none of it otherwise). The wal-index (`-shm`) lives in shared
//! memory and never survives.
//!
//! The image is captured before the relay is killed (by the world's
//! [`super::World::cut_power`]; madsim's is the world that plays power losses) and laid down
//! by the fault player ([`super::faults`]) once the dead incarnation has closed its
//! connection (closing checkpoints and removes the WAL, which would otherwise overwrite the
//! model with a clean shutdown).

use std::path::{Path, PathBuf};

/// The database files a power loss leaves behind.
pub struct DiskImage {
    database: PathBuf,
    main: Vec<u8>,
    /// The WAL as written, kept only when the relay's commits are durable.
    wal: Option<Vec<u8>>,
}

fn sibling(database: &Path, suffix: &str) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl DiskImage {
    /// What the disk holds for sure now, given whether the relay's commits are durable.
    pub fn capture(database: &Path, commits_durable: bool) -> std::io::Result<Self> {
        let wal_path = sibling(database, "-wal");
        Ok(Self {
            database: database.to_owned(),
            main: std::fs::read(database)?,
            wal: if commits_durable && wal_path.exists() {
                Some(std::fs::read(&wal_path)?)
            } else {
                None
            },
        })
    }

    /// Whether the dead incarnation still holds the database open (its WAL still exists:
    /// the last connection to close removes it).
    pub fn still_open(&self) -> bool {
        sibling(&self.database, "-wal").exists()
    }

    /// Replace the database files with the image.
    pub fn restore(self) -> std::io::Result<()> {
        let wal_path = sibling(&self.database, "-wal");
        std::fs::write(&self.database, &self.main)?;
        match &self.wal {
            Some(wal) => std::fs::write(&wal_path, wal)?,
            None => remove_if_present(&wal_path)?,
        }
        remove_if_present(&sibling(&self.database, "-shm"))
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}
