//! The upstream transport: what a worker does with a TCP connection to its host before the
//! first frame. It owns the scheme (`wss://` for every host, `ws://` only for a host that
//! `upstream.insecure_ws_hosts` names), the TLS client (rustls on `ring`, webpki's trust
//! anchors plus any in `upstream.tls_ca_file`; the hostname is the SNI name and the name
//! the certificate must carry), the subscription URL ([`SUBSCRIBE_REPOS_PATH`] and the cursor)
//! and the WebSocket client handshake. Resolving the name, the egress rule and the TCP
//! dial stay in the worker; [`Transport`] is built once per relay, at startup, and held by
//! `Upstreams`.
//!
//! TLS runs over whatever stream `rt::net` dials, so the simulation build compiles this
//! same code: madsim's stream (`rt::flow`) implements tokio's `AsyncRead`/`AsyncWrite`,
//! which are the traits tokio-rustls asks for. The wind tunnel names every one of its
//! hosts in `insecure_ws_hosts` (`"*"`): a simulator charges no time for CPU, so TLS there
//! would only spend real CPU per handshake, and the handshake's declared cost
//! (`cpu.upstream_handshake_us`) already models it.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

use super::hostname;
use super::UpstreamConfig;
use crate::atproto::frame::SUBSCRIBE_REPOS_PATH;
use crate::rt::net::TcpStream;

/// The last error of a host whose TLS handshake failed (a certificate that does not verify,
/// a server that does not speak TLS, …).
pub const HANDSHAKE_TLS: &str = "tls_handshake_error";

/// The last error of a host that did not complete the WebSocket upgrade.
pub const HANDSHAKE_WEBSOCKET: &str = "handshake_error";

/// How a host is dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain WebSocket: only for hosts `upstream.insecure_ws_hosts` names.
    Ws,
    /// WebSocket over TLS: every other host.
    Wss,
}

impl Scheme {
    /// The scheme `hostname` is dialled with under the allowlist `insecure_ws_hosts`.
    pub fn for_host(hostname: &str, insecure_ws_hosts: &[HostPattern]) -> Self {
        if insecure_ws_hosts
            .iter()
            .any(|pattern| pattern.matches(hostname))
        {
            Self::Ws
        } else {
            Self::Wss
        }
    }

    /// `ws` or `wss`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }
}

/// The URL a host is subscribed at: `wss://host:port/xrpc/com.atproto.sync.subscribeRepos?cursor=N` (brackets around
/// an IPv6 literal).
pub fn subscribe_url(scheme: Scheme, hostname: &str, port: u16, cursor: u64) -> String {
    let scheme = scheme.as_str();
    if hostname.contains(':') {
        format!("{scheme}://[{hostname}]:{port}{SUBSCRIBE_REPOS_PATH}?cursor={cursor}")
    } else {
        format!("{scheme}://{hostname}:{port}{SUBSCRIBE_REPOS_PATH}?cursor={cursor}")
    }
}

/// A pattern of `upstream.insecure_ws_hosts`, as the configuration spells it: a hostname
/// (or IP literal) that matches itself, `*.example.com` that matches every name under
/// `example.com` at any depth (not `example.com` itself), or `*` alone, every host (for
/// test networks only: the relay warns at startup). Matching ignores ASCII case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HostPattern {
    /// `*`: every host.
    Any,
    /// `*.<domain>`: every name under the domain (lowercase).
    Under(String),
    /// One hostname or IP literal (lowercase, as it is displayed).
    Exact(String),
}

impl HostPattern {
    /// Whether `hostname` (as the host table holds it) is matched.
    pub fn matches(&self, hostname: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Under(domain) => {
                let (name, domain) = (hostname.as_bytes(), domain.as_bytes());
                // At least one byte, then a dot, then the domain.
                name.len() > domain.len() + 1
                    && name[name.len() - domain.len() - 1] == b'.'
                    && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
            }
            Self::Exact(name) => hostname.eq_ignore_ascii_case(name),
        }
    }
}

/// Why a configured host pattern was not understood; the message quotes it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} in upstream.insecure_ws_hosts is not a host pattern (a hostname, *.domain or *): {why}")]
pub struct HostPatternError {
    text: String,
    why: String,
}

impl FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |why: String| HostPatternError {
            text: text.to_owned(),
            why,
        };
        if text == "*" {
            return Ok(Self::Any);
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Exact(ip.to_string()));
        }
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, text),
        };
        if name.contains('*') {
            return Err(refuse(
                "a * stands alone or as the whole first label, as in *.example.com".to_owned(),
            ));
        }
        let name = hostname::validate_name(name).map_err(|error| refuse(error.to_string()))?;
        Ok(if wildcard {
            Self::Under(name)
        } else {
            Self::Exact(name)
        })
    }
}

impl TryFrom<String> for HostPattern {
    type Error = HostPatternError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Under(domain) => write!(f, "*.{domain}"),
            Self::Exact(name) => f.write_str(name),
        }
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> Self {
        pattern.to_string()
    }
}

/// Why the relay cannot set up its upstream transport (it does not start).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// `upstream.tls_ca_file` could not be read.
    #[error("cannot read upstream.tls_ca_file {path}: {error}")]
    CaFileUnreadable {
        /// The configured path.
        path: String,
        /// What the OS said.
        error: io::Error,
    },
    /// `upstream.tls_ca_file` holds no certificate, or one that cannot be a trust anchor.
    #[error("upstream.tls_ca_file {path}: {why}")]
    CaFileInvalid {
        /// The configured path.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A handshake that did not complete; [`HandshakeFailure::reason`] is the host's last error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The TLS handshake failed.
    Tls,
    /// The WebSocket upgrade failed.
    WebSocket,
}

impl HandshakeFailure {
    /// [`HANDSHAKE_TLS`] or [`HANDSHAKE_WEBSOCKET`].
    pub fn reason(self) -> &'static str {
        match self {
            Self::Tls => HANDSHAKE_TLS,
            Self::WebSocket => HANDSHAKE_WEBSOCKET,
        }
    }
}

/// How this relay speaks to its upstreams: built once from the configuration (the trust
/// anchors read and parsed then), shared by every worker.
pub struct Transport {
    /// The rustls client every `wss://` dial uses (its session cache shared by all).
    tls: TlsConnector,
    /// The hosts dialled with `ws://` (`upstream.insecure_ws_hosts`).
    insecure_ws_hosts: Vec<HostPattern>,
    /// The port every host is dialled on (`upstream.port`) unless its entry names its own,
    /// for the URL.
    port: u16,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("insecure_ws_hosts", &self.insecure_ws_hosts)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// The transport `config` asks for: webpki's trust anchors, plus those in
    /// `tls_ca_file` when it is set. Warns when `insecure_ws_hosts` holds `*`.
    pub fn new(config: &UpstreamConfig) -> Result<Self, TransportError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if !config.tls_ca_file.as_os_str().is_empty() {
            add_trust_anchors(&mut roots, &config.tls_ca_file)?;
        }
        // rustls 0.23.48 deprecates its ring provider for having no post-quantum key
        // exchange (aws-lc-rs has one, at the cost of a large C build). What the relay
        // reads from upstreams is public; TLS here is for authenticity, which ring gives.
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports rustls's default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        if config.insecure_ws_hosts.contains(&HostPattern::Any) {
            tracing::warn!(
                "upstream.insecure_ws_hosts holds \"*\": every upstream is dialled over plain \
                 ws://, unencrypted and unauthenticated; this is for test networks only"
            );
        }
        Ok(Self {
            tls: TlsConnector::from(Arc::new(tls)),
            insecure_ws_hosts: config.insecure_ws_hosts.clone(),
            port: config.port,
        })
    }

    /// Subscribe to `hostname` from `cursor` over `tcp`, a connection to one of its
    /// addresses: TLS unless the host is allowlisted, then the WebSocket upgrade with the
    /// limits `ws`. The caller bounds the time it takes.
    pub async fn subscribe(
        &self,
        tcp: TcpStream,
        hostname: &str,
        cursor: u64,
        ws: WebSocketConfig,
    ) -> Result<WebSocketStream<UpstreamStream>, HandshakeFailure> {
        let (name, port) = hostname::split_port(hostname);
        let scheme = Scheme::for_host(name, &self.insecure_ws_hosts);
        let stream = match scheme {
            Scheme::Ws => Either::Left(tcp),
            Scheme::Wss => {
                let tls_failed = |error: &dyn fmt::Display| {
                    tracing::debug!(host = hostname, %error, "TLS handshake failed");
                    HandshakeFailure::Tls
                };
                let name =
                    ServerName::try_from(name.to_owned()).map_err(|error| tls_failed(&error))?;
                let stream = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|error| tls_failed(&error))?;
                Either::Right(Box::new(stream))
            }
        };
        let url = subscribe_url(scheme, name, port.unwrap_or(self.port), cursor);
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws))
            .await
            .map(|(stream, _response)| stream)
            .map_err(|_| HandshakeFailure::WebSocket)
    }
}

/// Add every certificate of the PEM file at `path` to `roots`; a file without one, or
/// with one that cannot be a trust anchor, is refused naming it.
fn add_trust_anchors(roots: &mut RootCertStore, path: &Path) -> Result<(), TransportError> {
    let shown = path.display().to_string();
    let invalid = |why: String| TransportError::CaFileInvalid {
        path: shown.clone(),
        why,
    };
    let pem = std::fs::read(path).map_err(|error| TransportError::CaFileUnreadable {
        path: shown.clone(),
        error,
    })?;
    let mut added = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|error| invalid(format!("not PEM: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| invalid(format!("a certificate is not a trust anchor: {error}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(invalid(
            "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(())
}

/// The stream a subscription reads: `Left`, the TCP connection itself (`ws://`), or
/// `Right`, TLS over it (`wss://`; boxed, so a plain connection does not carry TLS state's
/// size). tokio-util's `Either` reads and writes through whichever it holds.
pub type UpstreamStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(texts: &[&str]) -> Vec<HostPattern> {
        texts.iter().map(|text| text.parse().unwrap()).collect()
    }

    #[test]
    fn patterns_match_exact_names_names_under_a_domain_or_everything() {
        let exact: HostPattern = "PDS.user17.dev".parse().unwrap();
        assert_eq!(exact, HostPattern::Exact("pds.user17.dev".to_owned()));
        assert!(exact.matches("pds.user17.dev") && exact.matches("PDS.User17.Dev"));
        assert!(!exact.matches("a.pds.user17.dev") && !exact.matches("user17.dev"));

        let under: HostPattern = "*.host.example".parse().unwrap();
        for name in ["pds-00012.us-east.host.example", "a.host.example"] {
            assert!(under.matches(name), "{name}");
        }
        for name in [
            "host.example",
            "xhost.example",
            "host.example.org",
            ".host.example",
        ] {
            assert!(!under.matches(name), "{name}");
        }

        let any: HostPattern = "*".parse().unwrap();
        for name in ["bsky.team-9.example", "127.0.0.1", "localhost", "x"] {
            assert!(any.matches(name), "{name}");
        }

        let single_label: HostPattern = "localhost".parse().unwrap();
        assert!(single_label.matches("localhost"));
        let ip: HostPattern = "127.0.0.1".parse().unwrap();
        assert!(ip.matches("127.0.0.1") && !ip.matches("127.0.0.2"));
        let v6: HostPattern = "0:0::1".parse().unwrap();
        assert!(v6.matches("::1"));
    }

    #[test]
    fn a_bad_pattern_is_refused_naming_itself() {
        for (text, why) in [
            ("", "expected a DNS name"),
            ("**", "a * stands alone"),
            ("*.*.example", "a * stands alone"),
            ("pds*.example", "a * stands alone"),
            ("*example.com", "a * stands alone"),
            ("https://pds.example", "without scheme or path"),
            ("pds.example:443", "without a port"),
            ("pds_1.example", "only letters, digits and hyphens"),
            ("*.", "expected a DNS name"),
        ] {
            let error = text.parse::<HostPattern>().unwrap_err().to_string();
            assert!(
                error.starts_with(&format!(
                    "{text:?} in upstream.insecure_ws_hosts is not a host pattern"
                )) && error.contains(why),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn patterns_print_as_they_parse() {
        for text in ["*", "*.host.example", "pds.example", "localhost", "::1"] {
            let pattern: HostPattern = text.parse().unwrap();
            assert_eq!(pattern.to_string(), text);
            assert_eq!(pattern.to_string().parse::<HostPattern>().unwrap(), pattern);
        }
    }

    #[test]
    fn every_host_gets_tls_unless_the_allowlist_names_it() {
        let none = patterns(&[]);
        for name in ["bsky.network", "localhost", "127.0.0.1"] {
            assert_eq!(Scheme::for_host(name, &none), Scheme::Wss, "{name}");
        }
        let some = patterns(&["localhost", "*.test"]);
        assert_eq!(Scheme::for_host("localhost", &some), Scheme::Ws);
        assert_eq!(Scheme::for_host("pds.dev.test", &some), Scheme::Ws);
        assert_eq!(Scheme::for_host("test", &some), Scheme::Wss);
        assert_eq!(Scheme::for_host("pds.example.com", &some), Scheme::Wss);
        let all = patterns(&["*"]);
        assert_eq!(Scheme::for_host("pds.example.com", &all), Scheme::Ws);
    }

    #[test]
    fn the_url_names_the_scheme_the_host_the_port_the_path_and_the_cursor() {
        assert_eq!(
            subscribe_url(Scheme::Wss, "pds.example", 443, 0),
            "wss://pds.example:443/xrpc/com.atproto.sync.subscribeRepos?cursor=0"
        );
        assert_eq!(
            subscribe_url(Scheme::Ws, "127.0.0.1", 80, 5),
            "ws://127.0.0.1:80/xrpc/com.atproto.sync.subscribeRepos?cursor=5"
        );
        assert_eq!(
            subscribe_url(Scheme::Wss, "::1", 2583, 1),
            "wss://[::1]:2583/xrpc/com.atproto.sync.subscribeRepos?cursor=1"
        );
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused_naming_it() {
        let config = |path: &str| UpstreamConfig {
            tls_ca_file: path.into(),
            ..UpstreamConfig::default()
        };
        let missing = std::env::temp_dir().join("relay-transport-no-such-ca.pem");
        let error = Transport::new(&config(&missing.display().to_string()))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "cannot read upstream.tls_ca_file {}:",
                missing.display()
            )),
            "{error}"
        );
        let empty = std::env::temp_dir().join(format!(
            "relay-transport-{}-empty-ca.pem",
            std::process::id()
        ));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = Transport::new(&config(&empty.display().to_string()))
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&empty);
        assert_eq!(
            error,
            format!(
                "upstream.tls_ca_file {}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
                empty.display()
            )
        );
        assert!(Transport::new(&UpstreamConfig::default()).is_ok());
    }
}
