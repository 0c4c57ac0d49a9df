//! The atproto identifier syntaxes a relay checks on every frame: DIDs (the account a
//! message is about) and TIDs (a commit's `rev`), as the atproto specs define them
//! (<https://atproto.com/specs/did>, <https://atproto.com/specs/tid>). Checks are
//! syntactic only: whether a DID resolves is the signature-verification step's business.

/// Longest DID accepted (the spec's limit).
pub const DID_MAX_CHARS: usize = 2048;

/// Whether `did` is a syntactically valid DID: `did:<method>:<identifier>`, the method
/// lowercase letters, the identifier from `[A-Za-z0-9._:%-]`, not ending in `:` or `%`.
pub fn is_did(did: &str) -> bool {
    if did.len() > DID_MAX_CHARS {
        return false;
    }
    let Some(rest) = did.strip_prefix("did:") else {
        return false;
    };
    let Some((method, identifier)) = rest.split_once(':') else {
        return false;
    };
    !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_lowercase())
        && !identifier.is_empty()
        && identifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:%-".contains(&b))
        && !identifier.ends_with([':', '%'])
}

/// The base32-sortable alphabet TIDs are written in.
const TID_ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// Characters in a TID.
pub const TID_CHARS: usize = 13;

/// Whether `tid` is a syntactically valid TID: 13 base32-sortable characters, the top bit
/// (first character in `2-7a-j`) zero.
pub fn is_tid(tid: &str) -> bool {
    tid.len() == TID_CHARS
        && tid.bytes().all(|b| TID_ALPHABET.contains(&b))
        && b"234567abcdefghij".contains(&tid.as_bytes()[0])
}

/// The TID for `micros` microseconds since the Unix epoch and a 10-bit `clock_id`: 53 bits
/// of time then the clock id, big-endian, in base32-sortable. TIDs of later times sort
/// after earlier ones, as strings and as numbers.
pub fn tid(micros: u64, clock_id: u16) -> String {
    let value = ((micros & ((1 << 53) - 1)) << 10) | u64::from(clock_id & 0x3ff);
    (0..TID_CHARS)
        .rev()
        .map(|digit| TID_ALPHABET[((value >> (5 * digit)) & 31) as usize] as char)
        .collect()
}

/// The microseconds since the Unix epoch a valid TID carries.
pub fn tid_micros(tid: &str) -> Option<u64> {
    if !is_tid(tid) {
        return None;
    }
    let value = tid.bytes().fold(0u64, |value, b| {
        let digit = TID_ALPHABET.iter().position(|&a| a == b).unwrap_or(0) as u64;
        (value << 5) | digit
    });
    Some(value >> 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dids_follow_the_spec() {
        for good in [
            "did:plc:z72i7hdynmk6r22z27h6tvur",
            "did:web:blueskyweb.xyz",
            "did:web:localhost%3A1234",
            "did:method:val:two",
            "did:m:v",
        ] {
            assert!(is_did(good), "{good}");
        }
        for bad in [
            "",
            "did:",
            "did:plc",
            "did:plc:",
            "did:PLC:abc",
            "DID:plc:abc",
            "did:plc:abc:",
            "did:plc:abc%",
            "did:plc:a b",
            "did:plc:a/b",
            "plc:abc",
        ] {
            assert!(!is_did(bad), "{bad}");
        }
        assert!(!is_did(&format!("did:plc:{}", "a".repeat(DID_MAX_CHARS))));
    }

    #[test]
    fn tids_follow_the_spec_and_round_trip() {
        // Examples from the spec.
        for good in [
            "3jzfcijpj2z2a",
            "7777777777777",
            "3zzzzzzzzzzzz",
            "2222222222222",
        ] {
            assert!(is_tid(good), "{good}");
        }
        for bad in [
            "3jzfcijpj2z21",
            "0000000000000",
            "3JZFCIJPJ2Z2A",
            "3jzfcijpj2z2aa",
            "3jzfcijpj2z2",
            "kjzfcijpj2z2a",
        ] {
            assert!(!is_tid(bad), "{bad}");
        }
        let micros = 1_780_000_000_123_456;
        let made = tid(micros, 7);
        assert!(is_tid(&made), "{made}");
        assert_eq!(tid_micros(&made), Some(micros));
        assert!(tid(micros + 1, 0) > tid(micros, 1023));
        assert_eq!(tid_micros("nope"), None);
    }
}
