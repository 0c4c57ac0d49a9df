//! TCP flow control for the simulated network (compiled only under `--cfg madsim`).
//!
//! madsim's TCP has unbounded buffers: a write never waits, however slowly the peer reads.
//! Real TCP stops a writer once the peer's receive buffer and the writer's send buffer are
//! full, and that backpressure is exactly what makes a consumer *slow* for the relay (its
//! per-consumer queue fills while its socket will not take more). Without it a slow
//! consumer could never be kicked inside the tunnel.
//!
//! This module restores it: every direction of a connection has a window of
//! [`WINDOW_BYTES`] bytes. A write waits while the bytes written but not yet read by the
//! peer fill the window; the peer's reads open it again. Both ends find the shared window
//! by the connection's address pair (madsim gives the two ends mirrored local/peer
//! addresses), in a table local to the simulation thread (one run per thread). An end
//! that goes away closes both of its windows so the other end never waits on a ghost.
//!
//! Every participant of a simulated world must use these types (the relay through
//! `rt::net`, the tunnel's actors likewise); a peer on a raw madsim socket would never
//! open the window it was sent on.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes in flight per direction before a writer waits: a typical Linux send buffer plus
/// receive buffer (about 128 KiB each).
pub const WINDOW_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Window {
    in_flight: usize,
    /// One end has gone: never make anyone wait again.
    closed: bool,
    writer: Option<Waker>,
}

type SharedWindow = Arc<Mutex<Window>>;

/// (from, to): the direction bytes travel.
type Direction = (SocketAddr, SocketAddr);

thread_local! {
    static WINDOWS: RefCell<BTreeMap<Direction, SharedWindow>> = const { RefCell::new(BTreeMap::new()) };
}

fn lock(window: &SharedWindow) -> std::sync::MutexGuard<'_, Window> {
    window.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The window for `direction`, created if this is the first end to ask. `fresh` replaces
/// whatever a previous connection on the same address pair left behind.
fn window(direction: Direction, fresh: bool) -> SharedWindow {
    WINDOWS.with(|windows| {
        let mut windows = windows.borrow_mut();
        if fresh {
            let window = SharedWindow::default();
            windows.insert(direction, Arc::clone(&window));
            return window;
        }
        Arc::clone(windows.entry(direction).or_default())
    })
}

/// Directions with a window in this thread's table (a world must start with none).
pub(super) fn windows_open() -> usize {
    WINDOWS.with(|windows| windows.borrow().len())
}

fn close(direction: Direction, window: &SharedWindow) {
    let writer = {
        let mut state = lock(window);
        state.closed = true;
        state.writer.take()
    };
    if let Some(writer) = writer {
        writer.wake();
    }
    WINDOWS.with(|windows| {
        let mut windows = windows.borrow_mut();
        if windows
            .get(&direction)
            .is_some_and(|current| Arc::ptr_eq(current, window))
        {
            windows.remove(&direction);
        }
    });
}

/// A simulated TCP stream with flow control. Mirrors the parts of `tokio::net::TcpStream`
/// the relay and the tunnel use.
#[derive(Debug)]
pub struct TcpStream {
    inner: tokio::net::TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    /// Bytes we send (local → peer).
    outgoing: SharedWindow,
    /// Bytes we receive (peer → local).
    incoming: SharedWindow,
}

impl TcpStream {
    fn wrap(inner: tokio::net::TcpStream, fresh: bool) -> io::Result<Self> {
        let local = inner.local_addr()?;
        let peer = inner.peer_addr()?;
        Ok(Self {
            outgoing: window((local, peer), fresh),
            incoming: window((peer, local), fresh),
            inner,
            local,
            peer,
        })
    }

    /// Open a connection to `addr` (a socket address or `(host, port)`).
    pub async fn connect<A: tokio::net::ToSocketAddrs>(addr: A) -> io::Result<Self> {
        Self::wrap(tokio::net::TcpStream::connect(addr).await?, true)
    }

    /// This end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    /// Accepted for signature parity with tokio; the simulated network has no Nagle.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.set_nodelay(nodelay)
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        close((self.local, self.peer), &self.outgoing);
        close((self.peer, self.local), &self.incoming);
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            let writer = {
                let mut window = lock(&this.incoming);
                window.in_flight = window.in_flight.saturating_sub(read);
                window.writer.take()
            };
            if let Some(writer) = writer {
                writer.wake();
            }
        }
        polled
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let room = {
            let mut window = lock(&this.outgoing);
            if window.closed {
                usize::MAX
            } else {
                let room = WINDOW_BYTES.saturating_sub(window.in_flight);
                if room == 0 {
                    window.writer = Some(cx.waker().clone());
                    // Bytes still buffered on our side must leave for the peer to read them.
                    drop(window);
                    return match Pin::new(&mut this.inner).poll_flush(cx) {
                        Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                        _ => Poll::Pending,
                    };
                }
                room
            }
        };
        let len = buf.len().min(room);
        let polled = Pin::new(&mut this.inner).poll_write(cx, &buf[..len]);
        if let Poll::Ready(Ok(written)) = polled {
            let mut window = lock(&this.outgoing);
            window.in_flight += written;
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A simulated listener whose accepted streams have flow control.
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
}

impl TcpListener {
    /// Bind to `addr`.
    pub async fn bind<A: tokio::net::ToSocketAddrs>(addr: A) -> io::Result<Self> {
        Ok(Self {
            inner: tokio::net::TcpListener::bind(addr).await?,
        })
    }

    /// The next connection and its peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        Ok((TcpStream::wrap(stream, false)?, peer))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
