//! CAR v1 files (<https://ipld.io/specs/transport/car/carv1/>): the `blocks` field of
//! `#commit` and `#sync` messages. Reading is `rs-car-sync`'s (block hashes checked against
//! their CIDs); writing — what upstream hosts do, in the tunnel and in tests — is the
//! format's framing around DAG-CBOR blocks: a header `{version: 1, roots}`, then each block
//! as `varint(length) CID bytes`.
//!
//! Every block here is DAG-CBOR hashed with SHA-256 ([`block_cid`]), as atproto repos are.

use ipld_core::cid::multihash::Multihash;
use ipld_core::cid::Cid;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The DAG-CBOR multicodec.
const DAG_CBOR: u64 = 0x71;
/// The SHA-256 multihash code.
const SHA2_256: u64 = 0x12;

/// The CID of a DAG-CBOR block: CIDv1, dag-cbor, sha2-256.
pub fn block_cid(block: &[u8]) -> Cid {
    let digest = Sha256::digest(block);
    let hash = Multihash::<64>::wrap(SHA2_256, &digest).expect("a 32-byte digest fits");
    Cid::new_v1(DAG_CBOR, hash)
}

/// A CAR file's root and its blocks, as read.
#[derive(Debug, PartialEq)]
pub struct Car {
    /// The single root (atproto CARs name exactly one: the commit).
    pub root: Cid,
    /// Every block, in file order.
    pub blocks: Vec<(Cid, Vec<u8>)>,
}

impl Car {
    /// The block whose CID is `cid`.
    pub fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.blocks
            .iter()
            .find(|(block_cid, _)| block_cid == cid)
            .map(|(_, data)| data.as_slice())
    }
}

/// Why a CAR file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BadCar {
    /// The reader refused it (truncated, bad varint, a block whose hash does not match
    /// its CID, not version 1 or 2).
    #[error("unreadable CAR: {0:?}")]
    Unreadable(rs_car_sync::CarDecodeError),
    /// Not exactly one root.
    #[error("a CAR with {0} roots (one expected)")]
    Roots(usize),
}

/// Read a CAR file, checking every block's hash against its CID.
pub fn read(bytes: &[u8]) -> Result<Car, BadCar> {
    let mut reader = bytes;
    let (blocks, header) =
        rs_car_sync::car_read_all(&mut reader, true).map_err(BadCar::Unreadable)?;
    match header.roots.as_slice() {
        [root] => Ok(Car {
            root: *root,
            blocks,
        }),
        roots => Err(BadCar::Roots(roots.len())),
    }
}

#[derive(Serialize)]
struct Header<'a> {
    version: u64,
    roots: &'a [Cid],
}

/// Write a CAR file with `root` and `blocks` (each block's CID computed with
/// [`block_cid`]).
pub fn write<'a>(root: Cid, blocks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let header = serde_ipld_dagcbor::to_vec(&Header {
        version: 1,
        roots: &[root],
    })
    .expect("a CAR header always encodes");
    let mut out = Vec::with_capacity(header.len() + 512);
    put_varint(&mut out, header.len() as u64);
    out.extend_from_slice(&header);
    for block in blocks {
        let cid = block_cid(block).to_bytes();
        put_varint(&mut out, (cid.len() + block.len()) as u64);
        out.extend_from_slice(&cid);
        out.extend_from_slice(block);
    }
    out
}

/// An unsigned LEB128 varint, as CAR frames its sections.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_cars_read_back_with_checked_hashes() {
        let first = serde_ipld_dagcbor::to_vec(&"first block").unwrap();
        let second = serde_ipld_dagcbor::to_vec(&vec![7u8; 300]).unwrap();
        let root = block_cid(&first);
        let car = read(&write(root, [first.as_slice(), second.as_slice()])).unwrap();
        assert_eq!(car.root, root);
        assert_eq!(car.blocks.len(), 2);
        assert_eq!(car.block(&root), Some(first.as_slice()));
        assert_eq!(car.block(&block_cid(&second)), Some(second.as_slice()));
    }

    #[test]
    fn tampered_and_truncated_cars_are_refused() {
        let block = serde_ipld_dagcbor::to_vec(&"a block").unwrap();
        let mut bytes = write(block_cid(&block), [block.as_slice()]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(read(&bytes), Err(BadCar::Unreadable(_))));
        let bytes = write(block_cid(&block), [block.as_slice()]);
        assert!(read(&bytes[..bytes.len() - 3]).is_err());
        assert!(read(b"").is_err());
        assert!(read(&[0xff; 16]).is_err());
    }

    #[test]
    fn block_cids_are_the_usual_atproto_cids() {
        // CIDv1 dag-cbor sha2-256 print as "bafyrei…" in base32.
        assert!(block_cid(b"\xa0").to_string().starts_with("bafyrei"));
    }
}
