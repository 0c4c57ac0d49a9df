//! Hostname validation for `requestCrawl`: what we are willing to dial.
//!
//! Accepts DNS names per RFC 1123 (labels of letters, digits and inner hyphens, 1–63
//! bytes each, 253 bytes in all, at least two labels), lowercased. Rejects IP literals,
//! ports, schemes, paths and single-label names, each with its own message. The names a
//! configuration matches hostnames against may be single labels ([`validate_name`]). A
//! development host may be named with its port (`localhost:2583`,
//! [`validate_name_with_port`]); [`split_port`] reads a host-table entry back into the
//! name to resolve and the port to dial.

use std::fmt;

/// Why a hostname was rejected; the message is shown to the caller in a 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostnameError(String);

impl fmt::Display for HostnameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HostnameError {}

/// Validate and normalise (lowercase, no trailing dot) a hostname.
pub fn validate(raw: &str) -> Result<String, HostnameError> {
    normalise(raw, 2)
}

/// Validate and normalise a DNS name of one label or more: as [`validate`], but a single
/// label (`localhost`, `test`) will do. For names a configuration matches hostnames
/// against (`upstream.insecure_ws_hosts`), not for names the relay is asked to dial.
pub fn validate_name(raw: &str) -> Result<String, HostnameError> {
    normalise(raw, 1)
}

/// [`validate_name`], with an optional `:port` (1–65535) after the name: how requests name
/// a development host that serves on a port of its own (`localhost:2583`, a reference PDS
/// on this machine). The normalised entry (`name` or `name:port`) and the name alone.
pub fn validate_name_with_port(raw: &str) -> Result<(String, String), HostnameError> {
    let Some((name, port)) = raw.rsplit_once(':') else {
        let name = validate_name(raw)?;
        return Ok((name.clone(), name));
    };
    let name = validate_name(name)?;
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(port) if digits && port > 0 => Ok((format!("{name}:{port}"), name)),
        _ => Err(HostnameError(format!(
            "invalid hostname {raw:?}: the port must be a number from 1 to 65535"
        ))),
    }
}

/// A host-table entry as the name to resolve and the port to dial, when the entry names
/// one (`localhost:2583`; an IPv6 literal, with more than one colon, names none).
pub fn split_port(entry: &str) -> (&str, Option<u16>) {
    match entry.split_once(':') {
        Some((name, port)) if !port.contains(':') => match port.parse::<u16>() {
            Ok(port) if port > 0 => (name, Some(port)),
            _ => (entry, None),
        },
        _ => (entry, None),
    }
}

fn normalise(raw: &str, labels_min: usize) -> Result<String, HostnameError> {
    let reject = |why: &str| Err(HostnameError(format!("invalid hostname {raw:?}: {why}")));
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    if name.is_empty() {
        return reject("expected a DNS name such as pds.example.com");
    }
    if name.contains("://") || name.contains('/') {
        return reject("expected a bare hostname, without scheme or path");
    }
    if name.contains(':') {
        return reject("expected a hostname without a port");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return reject("IP addresses are not accepted; expected a DNS name");
    }
    if name.len() > 253 {
        return reject("longer than 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < labels_min {
        return reject("expected at least two labels, e.g. host.example");
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return reject("each label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return reject("labels may contain only letters, digits and hyphens");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return reject("labels may not start or end with a hyphen");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return reject("the top-level label may not be numeric");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::{split_port, validate, validate_name, validate_name_with_port};

    #[test]
    fn accepts_and_normalises_dns_names() {
        assert_eq!(validate("PDS-1.Example.COM.").unwrap(), "pds-1.example.com");
        assert_eq!(validate("a.b").unwrap(), "a.b");
    }

    #[test]
    fn rejects_what_we_will_not_dial_with_a_reason() {
        for (input, reason) in [
            ("", "expected a DNS name"),
            ("https://a.example", "without scheme or path"),
            ("a.example/x", "without scheme or path"),
            ("a.example:443", "without a port"),
            ("10.0.0.1", "IP addresses are not accepted"),
            ("localhost", "at least two labels"),
            ("a..example", "1 to 63 characters"),
            ("a_b.example", "only letters, digits and hyphens"),
            ("-a.example", "may not start or end with a hyphen"),
            ("a.123", "top-level label may not be numeric"),
        ] {
            let error = validate(input).unwrap_err().to_string();
            assert!(error.contains(reason), "{input:?}: {error}");
        }
        assert!(validate(&format!("{}.example", "a".repeat(64))).is_err());
        assert!(validate(&format!("{}.example", "a.".repeat(130))).is_err());
    }

    #[test]
    fn a_name_to_match_against_may_have_one_label() {
        assert_eq!(validate_name("LocalHost").unwrap(), "localhost");
        assert_eq!(validate_name("pds.Example").unwrap(), "pds.example");
        for input in ["", "a_b", "10.0.0.1", "a.123", "-a", "a:80"] {
            assert!(validate_name(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn a_development_host_may_be_named_with_its_port() {
        let entry = |raw: &str| validate_name_with_port(raw).map(|(entry, _)| entry);
        assert_eq!(
            validate_name_with_port("LocalHost:2583").unwrap(),
            ("localhost:2583".to_owned(), "localhost".to_owned())
        );
        assert_eq!(entry("pds.example").unwrap(), "pds.example");
        for (input, reason) in [
            ("localhost:0", "from 1 to 65535"),
            ("localhost:65536", "from 1 to 65535"),
            ("localhost:+80", "from 1 to 65535"),
            ("localhost:", "from 1 to 65535"),
            ("a_b:80", "only letters, digits and hyphens"),
            ("10.0.0.1:80", "IP addresses are not accepted"),
        ] {
            let error = entry(input).unwrap_err().to_string();
            assert!(error.contains(reason), "{input:?}: {error}");
        }
        assert_eq!(split_port("localhost:2583"), ("localhost", Some(2583)));
        assert_eq!(split_port("pds.example"), ("pds.example", None));
        assert_eq!(split_port("::1"), ("::1", None));
        assert_eq!(split_port("127.0.0.1"), ("127.0.0.1", None));
    }
}
