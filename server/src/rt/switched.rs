//! Sockets for a build that carries the turmoil engine (cargo feature `turmoil`, ordinary
//! tokio otherwise): each socket is turmoil's when it is made inside a turmoil simulation
//! and tokio's when it is not.
//!
//! The switch is made per socket at `connect`/`bind` time, never per call site, because
//! cargo unifies features across a workspace: once the wind tunnel enables `turmoil`, the
//! relay's own tests and binary in the same build get it too, and they must keep real
//! sockets. Inside a simulation turmoil's TCP models what madsim's lacks (RST, half-close,
//! a bounded accept queue, flow control), so the relay needs no window of its own there.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A TCP stream: a real one, or one of turmoil's simulated ones.
#[derive(Debug)]
pub enum TcpStream {
    /// An operating-system socket.
    Tokio(tokio::net::TcpStream),
    /// A socket of the running turmoil simulation.
    Turmoil(turmoil::net::TcpStream),
}

impl TcpStream {
    /// Connect to `addr` (an address, or a `(hostname, port)` pair that the engine
    /// resolves: the system resolver, or turmoil's host table).
    pub async fn connect<A>(addr: A) -> io::Result<Self>
    where
        A: tokio::net::ToSocketAddrs + turmoil::ToSocketAddrs,
    {
        if turmoil::in_simulation() {
            Ok(Self::Turmoil(turmoil::net::TcpStream::connect(addr).await?))
        } else {
            Ok(Self::Tokio(tokio::net::TcpStream::connect(addr).await?))
        }
    }

    /// This end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tokio(stream) => stream.local_addr(),
            Self::Turmoil(stream) => stream.local_addr(),
        }
    }

    /// The far end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tokio(stream) => stream.peer_addr(),
            Self::Turmoil(stream) => stream.peer_addr(),
        }
    }

    /// Set `TCP_NODELAY` (turmoil delivers every write as its own segment already).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            Self::Tokio(stream) => stream.set_nodelay(nodelay),
            Self::Turmoil(stream) => stream.set_nodelay(nodelay),
        }
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tokio(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Turmoil(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tokio(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Turmoil(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tokio(stream) => Pin::new(stream).poll_flush(cx),
            Self::Turmoil(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tokio(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Turmoil(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// Resolve `host` on `port`: the system resolver, or inside a turmoil simulation its host
/// table. turmoil's table names every host of the simulation; a name it does not know is
/// given a fresh address with no host behind it, where a dial is refused.
pub async fn lookup_host(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if turmoil::in_simulation() {
        Ok(vec![SocketAddr::new(turmoil::lookup(host), port)])
    } else {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// A TCP listener: a real one, or one of turmoil's simulated ones.
pub enum TcpListener {
    /// An operating-system listener.
    Tokio(tokio::net::TcpListener),
    /// A listener of the running turmoil simulation.
    Turmoil(turmoil::net::TcpListener),
}

impl TcpListener {
    /// Bind `addr`.
    pub async fn bind<A>(addr: A) -> io::Result<Self>
    where
        A: tokio::net::ToSocketAddrs + turmoil::ToSocketAddrs,
    {
        if turmoil::in_simulation() {
            Ok(Self::Turmoil(turmoil::net::TcpListener::bind(addr).await?))
        } else {
            Ok(Self::Tokio(tokio::net::TcpListener::bind(addr).await?))
        }
    }

    /// Wait for the next connection.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match self {
            Self::Tokio(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((TcpStream::Tokio(stream), peer))
            }
            Self::Turmoil(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((TcpStream::Turmoil(stream), peer))
            }
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tokio(listener) => listener.local_addr(),
            Self::Turmoil(listener) => listener.local_addr(),
        }
    }
}

// turmoil's listener has no `Debug`; the engine and the address are what a reader needs.
impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match self {
            Self::Tokio(_) => "tokio",
            Self::Turmoil(_) => "turmoil",
        };
        f.debug_struct("TcpListener")
            .field("engine", &engine)
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}
