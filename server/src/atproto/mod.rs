//! atproto's sync protocol as the relay speaks it, without I/O: the event-stream framing of
//! `com.atproto.sync.subscribeRepos` ([`frame`]), its message bodies ([`message`]), the CAR
//! slices commits carry ([`car`]), the identifier syntaxes ([`syntax`]), and the
//! recognition of canonical DAG-CBOR that lets the relay renumber a body without re-encoding
//! it (`canonical`). The upstream
//! workers decode with it, the relay's subscription endpoint encodes with it, and the
//! wind tunnel's hosts and consumers use the same code to play the other side.
//!
//! Not here yet: signature verification (resolving each DID's signing key, with a cache)
//! — the seam is [`frame::decode`]'s commit check, which reads the commit object and its
//! `sig` but does not verify it.

mod canonical;
pub mod car;
pub mod frame;
pub mod message;
pub mod syntax;
