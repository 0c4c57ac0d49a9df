//! Recognising canonical DAG-CBOR without decoding it. [`seq_value`] walks a message body
//! once and, when the body is byte for byte what encoding its decoded value gives — every
//! head in its shortest form, every map's keys text, sorted by length then bytes and none
//! repeated, text valid UTF-8, floats 64-bit and finite (no negative zero), no tag but 42 on
//! a CID in its own canonical bytes — says where its top-level `seq` value lies. The
//! sequencer then writes its own `seq` there (a splice) instead of decoding every field
//! into a map and encoding them all again: the same bytes, without the allocations.
//!
//! It never refuses anything: a body it does not recognise is left to the decoder
//! ([`super::frame`]), which refuses it or decodes it to be re-encoded. The decoder
//! (`serde_ipld_dagcbor`) is strict — it refuses non-shortest heads, unsorted keys and
//! other floats — so what it accepts and this walk does not is, in practice, a body nested
//! deeper than [`DEPTH_MAX`].

use std::ops::Range;

use ipld_core::cid::Cid;

/// Nesting deeper than this is left to the decoder.
const DEPTH_MAX: usize = 32;

/// CBOR major types.
const UNSIGNED: u8 = 0;
const NEGATIVE: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const TAG: u8 = 6;
const SIMPLE: u8 = 7;

/// DAG-CBOR's only tag: a CID.
const TAG_CID: u64 = 42;

/// Where the top-level `seq` value (an unsigned integer) lies in `body`, if `body` is a
/// canonical DAG-CBOR map holding one and nothing follows it.
pub fn seq_value(body: &[u8]) -> Option<Range<usize>> {
    let mut walk = Walk { bytes: body, at: 0 };
    let Head {
        major: MAP,
        arg: pairs,
        ..
    } = walk.head()?
    else {
        return None;
    };
    let mut previous = None;
    let mut seq = None;
    for _ in 0..pairs {
        let key = walk.key(&mut previous)?;
        let start = walk.at;
        walk.item(1)?;
        if key == b"seq" {
            seq = Some(start..walk.at);
        }
    }
    let seq = seq.filter(|_| walk.at == body.len())?;
    (body[seq.start] >> 5 == UNSIGNED).then_some(seq)
}

/// A CBOR item's head: its major type, additional information and argument.
struct Head {
    major: u8,
    info: u8,
    arg: u64,
}

struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Walk<'a> {
    fn take(&mut self, count: u64) -> Option<&'a [u8]> {
        let end = self.at.checked_add(usize::try_from(count).ok()?)?;
        let taken = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(taken)
    }

    /// The next head, if its argument is in its shortest form (a float's is its bits).
    fn head(&mut self) -> Option<Head> {
        let initial = self.take(1)?[0];
        let (major, info) = (initial >> 5, initial & 0x1f);
        let width = match info {
            0..=23 => {
                return Some(Head {
                    major,
                    info,
                    arg: u64::from(info),
                })
            }
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return None,
        };
        let arg = self
            .take(width)?
            .iter()
            .fold(0, |arg, &byte| arg << 8 | u64::from(byte));
        let shortest = match width {
            1 => arg >= 24,
            2 => arg > 0xff,
            4 => arg > 0xffff,
            _ => major == SIMPLE || arg > 0xffff_ffff,
        };
        shortest.then_some(Head { major, info, arg })
    }

    /// A map key: text, after `previous` in DAG-CBOR's order (length, then bytes).
    fn key(&mut self, previous: &mut Option<&'a [u8]>) -> Option<&'a [u8]> {
        let Head {
            major: TEXT, arg, ..
        } = self.head()?
        else {
            return None;
        };
        let key = self.take(arg)?;
        std::str::from_utf8(key).ok()?;
        if previous.is_some_and(|previous| (previous.len(), previous) >= (key.len(), key)) {
            return None;
        }
        *previous = Some(key);
        Some(key)
    }

    fn item(&mut self, depth: usize) -> Option<()> {
        if depth > DEPTH_MAX {
            return None;
        }
        let Head { major, info, arg } = self.head()?;
        match major {
            UNSIGNED | NEGATIVE => Some(()),
            BYTES => self.take(arg).map(drop),
            TEXT => std::str::from_utf8(self.take(arg)?).ok().map(drop),
            ARRAY => (0..arg).try_for_each(|_| self.item(depth + 1)),
            MAP => {
                let mut previous = None;
                (0..arg).try_for_each(|_| {
                    self.key(&mut previous)?;
                    self.item(depth + 1)
                })
            }
            TAG if arg == TAG_CID => {
                let Head {
                    major: BYTES, arg, ..
                } = self.head()?
                else {
                    return None;
                };
                // A byte string of the multibase identity prefix (0) and the CID.
                let (&0, cid) = self.take(arg)?.split_first()? else {
                    return None;
                };
                (Cid::try_from(cid).ok()?.to_bytes() == cid).then_some(())
            }
            SIMPLE => match info {
                // false, true, null
                20..=22 => Some(()),
                27 => {
                    let float = f64::from_bits(arg);
                    (float.is_finite() && !(float == 0.0 && float.is_sign_negative())).then_some(())
                }
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ipld_core::ipld::Ipld;

    use super::*;

    fn encoded(value: &Ipld) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(value).unwrap()
    }

    fn body(fields: &[(&str, Ipld)]) -> Ipld {
        Ipld::Map(
            fields
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn the_seq_of_an_encoded_body_is_found() {
        let cid =
            Cid::try_from("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm").unwrap();
        let value = body(&[
            ("seq", Ipld::Integer(70_000)),
            ("repo", Ipld::String("did:plc:abc".into())),
            ("ops", Ipld::List(vec![body(&[("cid", Ipld::Link(cid))])])),
            ("blocks", Ipld::Bytes(vec![1; 300])),
            ("tooBig", Ipld::Bool(false)),
            ("since", Ipld::Null),
            ("weight", Ipld::Float(0.5)),
            ("delta", Ipld::Integer(-70_000)),
        ]);
        let bytes = encoded(&value);
        let seq = seq_value(&bytes).expect("canonical");
        assert_eq!(&bytes[seq], encoded(&Ipld::Integer(70_000)).as_slice());
    }

    #[test]
    fn what_is_not_canonical_is_left_to_the_decoder() {
        let canonical = encoded(&body(&[
            ("seq", Ipld::Integer(5)),
            ("did", Ipld::String("x".into())),
        ]));
        // {"did": "x", "seq": 5}: keys by length, then bytes.
        assert_eq!(canonical, b"\xa2\x63did\x61x\x63seq\x05");
        assert!(seq_value(&canonical).is_some());
        let not_canonical: &[&[u8]] = &[
            // keys out of order
            b"\xa2\x63seq\x05\x63did\x61x",
            // a key repeated
            b"\xa2\x63seq\x05\x63seq\x05",
            // seq 5 in two bytes instead of one
            b"\xa2\x63did\x61x\x63seq\x18\x05",
            // a 32-bit float
            b"\xa2\x63did\xfa\x3f\x00\x00\x00\x63seq\x05",
            // negative zero
            b"\xa2\x63did\xfb\x80\x00\x00\x00\x00\x00\x00\x00\x63seq\x05",
            // a tag that is not a CID
            b"\xa2\x63did\xc1\x01\x63seq\x05",
            // text that is not UTF-8
            b"\xa2\x63did\x61\xff\x63seq\x05",
            // a negative seq, no seq, bytes after the map, a truncated map
            b"\xa2\x63did\x61x\x63seq\x25",
            b"\xa1\x63did\x61x",
            b"\xa2\x63did\x61x\x63seq\x05\x00",
            b"\xa2\x63did\x61x\x63seq",
            // not a map
            b"\x83\x01\x02\x03",
        ];
        for bytes in not_canonical {
            assert_eq!(seq_value(bytes), None, "{bytes:x?}");
        }
    }

    #[test]
    fn deep_nesting_is_left_to_the_decoder() {
        let mut value = Ipld::Integer(1);
        for _ in 0..DEPTH_MAX {
            value = Ipld::List(vec![value]);
        }
        let bytes = encoded(&body(&[("seq", Ipld::Integer(1)), ("x", value)]));
        assert_eq!(seq_value(&bytes), None);
    }
}
