//! A deliberately small HTTP/1.1 client over a simulated socket. Raw on purpose: churners
//! must be able to stop half-way through a request head, which no real client library does.

use std::io;

use relay::rt::net::TcpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The parts of a response the actors care about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Whether the server said it will close the connection.
    pub closes: bool,
}

/// Largest response head the client accepts before calling the response malformed.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Send `GET path` and read the whole response. `keep_alive = false` adds `Connection: close`.
pub async fn get(stream: &mut TcpStream, path: &str, keep_alive: bool) -> io::Result<Response> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: {connection}\r\n\r\n");
    write_flushed(stream, request.as_bytes()).await?;
    Ok(read_response(stream).await?.0)
}

/// Send `GET path` with `Connection: close` and read the response and its body as text.
pub async fn get_text(stream: &mut TcpStream, path: &str) -> io::Result<(Response, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    send_text(stream, &request).await
}

/// Send `request` (a whole request, head and body, asking to close the connection) and
/// read the response and its body as text.
pub async fn send_text(stream: &mut TcpStream, request: &str) -> io::Result<(Response, String)> {
    write_flushed(stream, request.as_bytes()).await?;
    let (response, body) = read_response(stream).await?;
    let text = String::from_utf8(body).map_err(|_| malformed("body is not UTF-8"))?;
    Ok((response, text))
}

/// Send `GET path` with `Connection: close`, shut the write half (the peer reads end of
/// stream after the request), and read the response.
pub async fn get_half_closed(stream: &mut TcpStream, path: &str) -> io::Result<Response> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    write_flushed(stream, request.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(read_response(stream).await?.0)
}

/// Write and flush (simulated sockets send only on flush).
pub async fn write_flushed(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Read one response: its parts and its body (`Content-Length` bytes).
async fn read_response(stream: &mut TcpStream) -> io::Result<(Response, Vec<u8>)> {
    let mut buffer = Vec::with_capacity(512);
    let (head_len, status, content_length, closes) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                };
                let content_length = header("content-length")
                    .map(|v| v.trim().parse::<usize>())
                    .transpose()
                    .map_err(|_| malformed("bad content-length"))?
                    .unwrap_or(0);
                let closes = header("connection").is_some_and(|v| v.contains("close"));
                break (head_len, response.code.unwrap_or(0), content_length, closes);
            }
            Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) => return Err(malformed("response head too large")),
            Err(error) => return Err(malformed(&error.to_string())),
        }
        if read_more(stream, &mut buffer).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
    };
    while buffer.len() < head_len + content_length {
        if read_more(stream, &mut buffer).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-body",
            ));
        }
    }
    buffer.truncate(head_len + content_length);
    Ok((Response { status, closes }, buffer.split_off(head_len)))
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let read = stream.read(&mut chunk).await?;
    buffer.extend_from_slice(&chunk[..read]);
    Ok(read)
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed response: {what}"),
    )
}
