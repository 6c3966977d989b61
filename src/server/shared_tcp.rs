//! A plain TCP connection that more than one owner can write to.
//!
//! hyper (and, after the upgrade, the session) reads and writes the socket
//! through `SharedTcp`; the connection's outlet keeps another handle on it
//! for the hub's direct writes (`outlet`). Both go through tokio's
//! `&TcpStream` methods: readiness is polled by the one task that reads or
//! waits, and the hub only ever tries a write that cannot wait.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Clone)]
pub struct SharedTcp(pub Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.0.try_read(unfilled) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                // A stale readiness: cleared, so the next poll waits.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl SharedTcp {
    /// `write` once the socket is writable, waiting again on a stale
    /// readiness.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(&self.0) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |tcp| tcp.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        match shut {
            Err(err) if err.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Bytes written through one handle and directly on the shared stream
    /// arrive in write order; reads see everything the peer sent, then the
    /// end once it shut its side.
    #[tokio::test]
    async fn both_handles_write_in_order_and_reads_reach_the_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut client = client.expect("connected");
        let stream = Arc::new(accepted.expect("accepted").0);
        let mut io = SharedTcp(stream.clone());
        io.write_all(b"one,").await.expect("written");
        stream.try_write(b"two,").expect("room in the buffer");
        io.write_all(b"three").await.expect("written");
        io.shutdown().await.expect("shut down");
        let mut got = String::new();
        client.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "one,two,three");
        let big = vec![7u8; 3 * 1024 * 1024];
        let (sent, read) = tokio::join!(client.write_all(&big), async {
            let mut all = Vec::new();
            let mut chunk = [0u8; 65536];
            while all.len() < big.len() {
                let read = io.read(&mut chunk).await.expect("read");
                assert!(read > 0, "no early end");
                all.extend_from_slice(&chunk[..read]);
            }
            all
        });
        sent.expect("sent");
        assert_eq!(read, big);
        drop(client);
        let mut rest = Vec::new();
        assert_eq!(io.read_to_end(&mut rest).await.expect("read"), 0);
    }
}
