//! Reading the host table through a query string: the `name=value` parameters the JSON
//! routes take (only known names, each at most once), and the page of hosts that
//! `?limit=N&cursor=<hostname>` selects, in hostname order. The admin API's `/admin/hosts`
//! and XRPC's `com.atproto.sync.listHosts` page through the table with this one code;
//! `com.atproto.sync.getHostStatus` reads its `hostname` with the same parameter reader.

use hyper::StatusCode;

use crate::upstream::{HostView, Upstreams};

/// A query the route refuses: the status, the error code and the message of its answer.
pub(super) type QueryError = (StatusCode, &'static str, String);

/// The values of `query`'s parameters, in the order of `known`; a parameter not in `known`,
/// or given twice, is refused (`400 invalid_query`).
pub(super) fn parameters<'q, const N: usize>(
    query: Option<&'q str>,
    known: [&str; N],
) -> Result<[Option<&'q str>; N], QueryError> {
    let mut values = [None; N];
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match known.iter().position(|known| *known == name) {
            Some(index) if values[index].is_none() => values[index] = Some(value),
            _ => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!(
                        "unexpected parameter {name:?}: expected {}, each at most once",
                        known
                            .iter()
                            .map(|name| format!("{name}=…"))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                ))
            }
        }
    }
    Ok(values)
}

/// `value` with its `%XX` escapes decoded (clients escape a DID's colons); `None` when an
/// escape is malformed or the result is not UTF-8.
pub(super) fn percent_decoded(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The page a `?limit=N&cursor=<hostname>` query asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PageRequest {
    /// Hosts on the page: 1 to the listing's maximum.
    pub limit: usize,
    /// The last hostname of the previous page (none: from the first host).
    pub cursor: Option<String>,
}

impl PageRequest {
    /// The page `query` asks for, `limit` defaulting to `limit_default` and at most
    /// `limit_max`; a bad limit is `400 invalid_limit`.
    pub fn of(
        query: Option<&str>,
        limit_default: usize,
        limit_max: usize,
    ) -> Result<Self, QueryError> {
        let [limit, cursor] = parameters(query, ["limit", "cursor"])?;
        let limit = match limit.map(str::parse::<usize>) {
            None => limit_default,
            Some(Ok(limit)) if (1..=limit_max).contains(&limit) => limit,
            Some(_) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "invalid_limit",
                    format!("limit must be a number from 1 to {limit_max}"),
                ))
            }
        };
        let cursor = match cursor.map(percent_decoded) {
            None => None,
            Some(Some(cursor)) => Some(cursor),
            Some(None) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    "cursor is not a valid percent-encoded string".to_owned(),
                ))
            }
        };
        Ok(Self { limit, cursor })
    }
}

/// One page of hosts in hostname order, and the cursor of the next page (none on the last).
pub(super) fn page(
    upstreams: &Upstreams,
    request: &PageRequest,
) -> (Vec<HostView>, Option<String>) {
    let mut hosts = upstreams.views_after(request.cursor.as_deref(), request.limit + 1);
    let more = hosts.len() > request.limit;
    hosts.truncate(request.limit);
    let cursor = more
        .then(|| hosts.last().map(|host| host.hostname.clone()))
        .flatten();
    (hosts, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded_and_broken_ones_refused() {
        assert_eq!(
            percent_decoded("did%3Aplc%3Aabc").as_deref(),
            Some("did:plc:abc")
        );
        assert_eq!(percent_decoded("a.example").as_deref(), Some("a.example"));
        for broken in ["%", "%4", "%zz", "%ff"] {
            assert_eq!(percent_decoded(broken), None, "{broken}");
        }
    }

    #[test]
    fn a_page_request_takes_a_limit_in_range_and_a_cursor() {
        assert_eq!(
            PageRequest::of(None, 200, 1000).unwrap(),
            PageRequest {
                limit: 200,
                cursor: None
            }
        );
        assert_eq!(
            PageRequest::of(Some("cursor=b.example&limit=1000"), 200, 1000).unwrap(),
            PageRequest {
                limit: 1000,
                cursor: Some("b.example".to_owned())
            }
        );
        for bad in ["limit=0", "limit=1001", "limit=ten", "limit="] {
            let (status, code, message) = PageRequest::of(Some(bad), 200, 1000).unwrap_err();
            assert_eq!(
                (status, code),
                (StatusCode::BAD_REQUEST, "invalid_limit"),
                "{bad}"
            );
            assert_eq!(message, "limit must be a number from 1 to 1000");
        }
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        for bad in ["page=2", "limit=1&limit=2"] {
            let refused = PageRequest::of(Some(bad), 200, 1000);
            assert!(
                matches!(refused, Err((StatusCode::BAD_REQUEST, "invalid_query", _))),
                "{bad}: {refused:?}"
            );
        }
        let (_, _, message) = parameters(Some("host=a"), ["hostname"]).unwrap_err();
        assert_eq!(
            message,
            "unexpected parameter \"host\": expected hostname=…, each at most once"
        );
        assert_eq!(
            parameters(Some("hostname=a.example&"), ["hostname"]).unwrap(),
            [Some("a.example")]
        );
    }
}
