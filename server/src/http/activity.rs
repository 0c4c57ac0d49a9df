//! An IO wrapper that stamps the connection's lifecycle slot whenever bytes arrive, so the
//! idle reaper can tell a quiet connection from a busy one without touching the socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use relay_lifecycle::ConnOwner;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::rt::time::Clock;

pin_project_lite::pin_project! {
    /// A stream whose reads postpone the idle reaper.
    pub struct ActivityIo<S> {
        #[pin]
        inner: S,
        owner: Arc<ConnOwner>,
        clock: Clock,
    }
}

impl<S> ActivityIo<S> {
    /// Wrap `inner`, stamping `owner`'s slot with `clock` on every non-empty read.
    pub fn new(inner: S, owner: Arc<ConnOwner>, clock: Clock) -> Self {
        Self {
            inner,
            owner,
            clock,
        }
    }
}

impl<S: AsyncRead> AsyncRead for ActivityIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.owner.touch(this.clock.now_ms());
        }
        result
    }
}

impl<S: AsyncWrite> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
