//! The process's open-file limit (`RLIMIT_NOFILE`) and the I/O errors that mean the relay
//! ran out of its own resources rather than a peer misbehaving.
//!
//! Every connection, upstream socket and database file costs a descriptor: 2,800 upstream
//! hosts and 1,024 consumers need about 4,000, above the 1,024 many systems give a process
//! by default. At startup the relay raises its soft limit toward what it needs (never above
//! the hard limit) and says so when that is not enough. An `EMFILE` while dialling is the
//! relay's shortage, so it must not count against the upstream host it was dialling
//! (`is_local_exhaustion`). Under madsim there are no descriptors and nothing to raise.

use std::io;

/// The open-file limit in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit: what the process may open now.
    pub soft: u64,
    /// The hard limit: how far an unprivileged process may raise `soft`.
    pub hard: u64,
}

/// Raise the soft open-file limit toward `wanted` (at most to the hard limit; never
/// lower it) and return the limit now in force.
#[cfg(not(madsim))]
pub fn raise_toward(wanted: u64) -> io::Result<FdLimit> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get()?;
    if soft < wanted {
        Resource::NOFILE.set(wanted.min(hard), hard)?;
    }
    let (soft, hard) = Resource::NOFILE.get()?;
    Ok(FdLimit { soft, hard })
}

/// A simulated relay opens no descriptors: its limit is unbounded.
#[cfg(madsim)]
pub fn raise_toward(_wanted: u64) -> io::Result<FdLimit> {
    Ok(FdLimit {
        soft: u64::MAX,
        hard: u64::MAX,
    })
}

/// Whether `error` means this process ran out of descriptors, socket buffers or memory
/// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): a local shortage, not the peer's fault.
pub fn is_local_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_local_and_a_refusal_is_not() {
        assert!(is_local_exhaustion(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_local_exhaustion(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_local_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
        assert!(!is_local_exhaustion(&io::Error::other("no os error")));
    }

    #[cfg(not(madsim))]
    #[test]
    fn the_soft_limit_is_raised_toward_what_is_wanted_and_never_lowered() {
        let before = raise_toward(0).unwrap();
        let wanted = before.soft.saturating_add(16).min(before.hard);
        let after = raise_toward(wanted).unwrap();
        assert!(after.soft >= wanted, "{before:?} -> {after:?}");
        assert_eq!(raise_toward(1).unwrap().soft, after.soft, "never lowered");
    }
}
