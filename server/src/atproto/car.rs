//! CAR v1 files (<https://ipld.io/specs/transport/car/carv1/>): the `blocks` field of
//! `#commit` and `#sync` messages. The format is framing around DAG-CBOR blocks: a header
//! `{version: 1, roots}` (DAG-CBOR, `serde_ipld_dagcbor`), then each block as
//! `varint(length) CID bytes`. Reading walks that framing itself — every length checked
//! against what is left, CIDs read by the `cid` crate, each block's SHA-256 checked against
//! its CID — because what it reads comes from any upstream: `rs-car-sync` 0.5, the reader
//! first used here, panics on a CID version it does not know, on a digest longer than 64
//! bytes and on a section shorter than its CID (the `upstream_frame` fuzz target found the
//! first; `fuzz/corpus/upstream_frame/` keeps the inputs). Writing is what upstream hosts
//! do, in the tunnel, the tests and the benchmarks.
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
    /// Truncated, a bad varint or CID, a header that is not `{version: 1, roots}`, a block
    /// whose hash is not SHA-256 or does not match its CID.
    #[error("unreadable CAR: {0}")]
    Unreadable(String),
    /// Not exactly one root.
    #[error("a CAR with {0} roots (one expected)")]
    Roots(usize),
}

/// Read a CAR v1 file, checking every block's SHA-256 against its CID. Never panics and
/// allocates at most the blocks' own bytes, whatever `bytes` holds.
pub fn read(bytes: &[u8]) -> Result<Car, BadCar> {
    let unreadable = |what: &str| BadCar::Unreadable(what.to_owned());
    let mut rest = bytes;
    let header_len = read_varint(&mut rest).ok_or_else(|| unreadable("bad header length"))?;
    let header = take(&mut rest, header_len).ok_or_else(|| unreadable("truncated header"))?;
    let header: OwnedHeader = serde_ipld_dagcbor::from_slice(header)
        .map_err(|error| BadCar::Unreadable(format!("bad header: {error}")))?;
    if header.version != 1 {
        return Err(BadCar::Unreadable(format!(
            "version {} (1 expected)",
            header.version
        )));
    }
    let root = match header.roots.as_slice() {
        [root] => *root,
        roots => return Err(BadCar::Roots(roots.len())),
    };
    let mut blocks = Vec::new();
    while !rest.is_empty() {
        let len = read_varint(&mut rest).ok_or_else(|| unreadable("bad section length"))?;
        let mut section = take(&mut rest, len).ok_or_else(|| unreadable("truncated section"))?;
        let cid = Cid::read_bytes(&mut section)
            .map_err(|error| BadCar::Unreadable(format!("bad CID: {error}")))?;
        let hash = cid.hash();
        if hash.code() != SHA2_256 || hash.digest() != Sha256::digest(section).as_slice() {
            return Err(BadCar::Unreadable(format!(
                "block {cid} does not hash to its CID"
            )));
        }
        blocks.push((cid, section.to_vec()));
    }
    Ok(Car { root, blocks })
}

/// An unsigned LEB128 varint (at most 64 bits), taken from the front of `bytes`.
fn read_varint(bytes: &mut &[u8]) -> Option<usize> {
    let mut value: u64 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if index == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            *bytes = &bytes[index + 1..];
            return usize::try_from(value).ok();
        }
    }
    None
}

/// The next `len` bytes of `bytes`, if there are that many.
fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if len > bytes.len() {
        return None;
    }
    let (taken, rest) = bytes.split_at(len);
    *bytes = rest;
    Some(taken)
}

#[derive(Serialize)]
struct Header<'a> {
    version: u64,
    roots: &'a [Cid],
}

#[derive(serde::Deserialize)]
struct OwnedHeader {
    version: u64,
    roots: Vec<Cid>,
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
    fn hostile_framing_is_refused_without_a_panic() {
        let block = serde_ipld_dagcbor::to_vec(&"a block").unwrap();
        let good = write(block_cid(&block), [block.as_slice()]);
        let header_end = 1 + usize::from(good[0]);
        let section = |cid_and_data: &[u8]| {
            let mut bytes = good[..header_end].to_vec();
            put_varint(&mut bytes, cid_and_data.len() as u64);
            bytes.extend_from_slice(cid_and_data);
            bytes
        };
        for hostile in [
            // CID version 2 (the crash the fuzz target found in the former reader).
            section(&[0x02, 0x71, 0x12, 0x20, 0x00]),
            // A 200-byte digest, and one of 65 bytes.
            section(&[0x01, 0x71, 0x12, 0xc8, 0x01, 0x00]),
            section(&[&[0x01, 0x71, 0x12, 0x41][..], &[0u8; 65]].concat()),
            // A section shorter than its CID.
            section(&[0x01, 0x71]),
            // A section length past the end, an overlong varint.
            [&good[..header_end], &[0xff, 0xff, 0x03][..]].concat(),
            [&good[..header_end], &[0xff; 11][..]].concat(),
            // A header length past the end.
            vec![0xff, 0x01, 0xa0],
        ] {
            assert!(
                matches!(read(&hostile), Err(BadCar::Unreadable(_))),
                "{hostile:?}"
            );
        }
        // Not version 1, no root.
        let v2 = serde_ipld_dagcbor::to_vec(&Header {
            version: 2,
            roots: &[block_cid(&block)],
        })
        .unwrap();
        let mut bytes = Vec::new();
        put_varint(&mut bytes, v2.len() as u64);
        bytes.extend_from_slice(&v2);
        assert!(matches!(read(&bytes), Err(BadCar::Unreadable(_))));
        let none = serde_ipld_dagcbor::to_vec(&Header {
            version: 1,
            roots: &[],
        })
        .unwrap();
        let mut bytes = Vec::new();
        put_varint(&mut bytes, none.len() as u64);
        bytes.extend_from_slice(&none);
        assert!(matches!(read(&bytes), Err(BadCar::Roots(0))));
    }

    #[test]
    fn block_cids_are_the_usual_atproto_cids() {
        // CIDv1 dag-cbor sha2-256 print as "bafyrei…" in base32.
        assert!(block_cid(b"\xa0").to_string().starts_with("bafyrei"));
    }
}
