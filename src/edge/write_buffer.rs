//! A write buffer for client connections that holds memory only while an answer is being
//! written.
//!
//! Pingora's L4 stream allocates its write buffer (`BufWriter::with_capacity`) when the
//! connection is accepted and keeps it for the connection's life, so every idle keep-alive
//! connection carries it (~1.5 KiB of the ~5.5 KiB an idle connection cost). Without that
//! buffer (`L4BufferSettings` write 0) an answer's head and body go out in separate sends
//! (+1 syscall and ~12 % CPU per request, benches/results/2026-12-06).
//!
//! [`LazyWriteBuf`] sits on top of the client stream (whose own write buffer is then 0): it
//! coalesces writes like `BufWriter` (small writes are copied, a flush sends them, and a write
//! that does not fit goes out with them in one vectored send — a head and a body larger than
//! the buffer leave together), allocates its buffer on the first small write after a flush, and
//! gives it back on every flush. Pingora flushes at the end of each answer (and after each
//! streamed chunk, which costs a send anyway), so an idle connection holds no buffer; the
//! price is one small allocation per answer.

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// See the module docs.
#[derive(Debug)]
pub struct LazyWriteBuf {
    inner: Stream,
    buf: Vec<u8>,
    /// Bytes of `buf` already sent.
    written: usize,
    cap: usize,
}

impl LazyWriteBuf {
    /// Wraps a client stream. `cap` 0 writes straight through.
    pub fn new(inner: Stream, cap: usize) -> Self {
        LazyWriteBuf {
            inner,
            buf: Vec::new(),
            written: 0,
            cap,
        }
    }

    /// Sends what is buffered.
    fn poll_flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send_with(cx, &[]).map_ok(|_| ())
    }

    /// Sends what is buffered and then `data` in one vectored write (a head and a body that
    /// does not fit beside it leave in one send, not two), as far as the socket takes them.
    /// Ready with how many bytes of `data` went: 0 when only buffered bytes did (the buffer
    /// is then empty, or the call was Pending).
    fn poll_send_with(
        &mut self,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        while self.written < self.buf.len() {
            let pending = &self.buf[self.written..];
            let mut slices = [IoSlice::new(&[]); 8];
            slices[0] = IoSlice::new(pending);
            let k = 1 + data.len().min(slices.len() - 1);
            slices[1..k].copy_from_slice(&data[..k - 1]);
            match Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..k]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write the buffered data",
                    )))
                }
                Poll::Ready(Ok(n)) if n < pending.len() => self.written += n,
                Poll::Ready(Ok(n)) => {
                    let used = n - pending.len();
                    self.buf.clear();
                    self.written = 0;
                    return Poll::Ready(Ok(used));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(0))
    }

    fn room(&self) -> usize {
        self.cap - self.buf.len()
    }

    fn push(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.cap);
        }
        self.buf.extend_from_slice(data);
    }
}

/// Wraps a client stream in a [`LazyWriteBuf`] of `cap` bytes.
pub fn wrap(stream: Stream, cap: usize) -> Stream {
    Box::new(LazyWriteBuf::new(stream, cap))
}

impl AsyncWrite for LazyWriteBuf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.len() > this.room() {
            let used = std::task::ready!(this.poll_send_with(cx, &[IoSlice::new(data)]))?;
            if used > 0 {
                return Poll::Ready(Ok(used));
            }
        }
        if data.len() >= this.cap {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.push(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total = bufs
            .iter()
            .fold(0usize, |acc, b| acc.saturating_add(b.len()));
        if total > this.room() {
            let used = std::task::ready!(this.poll_send_with(cx, bufs))?;
            if used > 0 {
                return Poll::Ready(Ok(used));
            }
        }
        if total >= this.cap {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.push(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_flush_buf(cx))?;
        // The answer (or chunk) is out: no memory held until the next one.
        this.buf = Vec::new();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for LazyWriteBuf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl Drop for LazyWriteBuf {
    fn drop(&mut self) {
        // Like Pingora's own buffer: one last attempt to send what is left, never waiting.
        if self.written < self.buf.len() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = self.poll_flush_buf(&mut cx);
        }
    }
}

#[async_trait]
impl Shutdown for LazyWriteBuf {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_flush_buf(cx)).await;
        self.inner.shutdown().await
    }
}

#[async_trait]
impl Peek for LazyWriteBuf {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl UniqueID for LazyWriteBuf {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for LazyWriteBuf {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for LazyWriteBuf {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for LazyWriteBuf {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for LazyWriteBuf {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client socket that records each send, and can refuse to take more than a few
    /// bytes per call.
    #[derive(Debug, Default)]
    struct Sends {
        sends: Arc<Mutex<Vec<Vec<u8>>>>,
        max_per_call: Option<usize>,
    }

    impl AsyncWrite for Sends {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.max_per_call.map_or(data.len(), |m| m.min(data.len()));
            self.sends.lock().unwrap().push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        /// One send for all the slices (as `writev` on a socket), up to `max_per_call`.
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            all.truncate(self.max_per_call.unwrap_or(usize::MAX));
            let n = all.len();
            self.sends.lock().unwrap().push(all);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    impl AsyncRead for Sends {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    #[async_trait]
    impl Shutdown for Sends {
        async fn shutdown(&mut self) {}
    }
    impl UniqueID for Sends {
        fn id(&self) -> UniqueIDType {
            7
        }
    }
    impl Ssl for Sends {}
    impl GetTimingDigest for Sends {
        fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
            vec![]
        }
    }
    impl GetProxyDigest for Sends {
        fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
            None
        }
    }
    impl GetSocketDigest for Sends {
        fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
            None
        }
    }
    impl Peek for Sends {}

    fn sends(cap: usize, max_per_call: Option<usize>) -> (LazyWriteBuf, Arc<Mutex<Vec<Vec<u8>>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let inner = Sends {
            sends: log.clone(),
            max_per_call,
        };
        (LazyWriteBuf::new(Box::new(inner), cap), log)
    }

    #[tokio::test]
    async fn a_small_answer_leaves_in_one_send_and_no_buffer_is_held_afterwards() {
        let (mut s, log) = sends(1460, None);
        assert_eq!(s.buf.capacity(), 0, "no buffer before the first answer");
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
            .await
            .unwrap();
        s.write_all(b"ok\n").await.unwrap();
        assert!(
            log.lock().unwrap().is_empty(),
            "nothing sent before the flush"
        );
        s.flush().await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".to_vec()]
        );
        assert_eq!(s.buf.capacity(), 0, "the buffer is given back once sent");
        // The next answer works the same way.
        s.write_all(b"again").await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(log.lock().unwrap().len(), 2);
        assert_eq!(s.id(), 7, "the wrapped stream answers for itself");
    }

    #[tokio::test]
    async fn a_write_that_does_not_fit_leaves_with_the_buffered_bytes_in_one_send() {
        let (mut s, log) = sends(16, None);
        s.write_all(b"head").await.unwrap();
        let big = vec![b'x'; 40];
        s.write_all(&big).await.unwrap();
        s.write_all(b"tail").await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            vec![[&b"head"[..], &big].concat(), b"tail".to_vec()],
            "the head and a large body in one send, in order"
        );
        // The same for a vectored write (a chunk: size line, data, CRLF) behind a head.
        let (mut s, log) = sends(16, None);
        s.write_all(b"head").await.unwrap();
        let parts = [
            IoSlice::new(b"28\r\n"),
            IoSlice::new(&big),
            IoSlice::new(b"\r\n"),
        ];
        let sent = s.write_vectored(&parts).await.unwrap();
        assert_eq!(sent, 46, "one call takes the whole chunk");
        s.flush().await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            vec![[&b"head28\r\n"[..], &big, b"\r\n"].concat()]
        );
    }

    #[tokio::test]
    async fn a_socket_that_takes_part_of_a_coalesced_send_loses_nothing() {
        for max in [1, 3, 4, 5, 30, 43] {
            let (mut s, log) = sends(16, Some(max));
            s.write_all(b"head").await.unwrap();
            let big: Vec<u8> = (0..40u8).collect();
            s.write_all(&big).await.unwrap();
            s.write_all(b"tail").await.unwrap();
            s.flush().await.unwrap();
            let got: Vec<u8> = log.lock().unwrap().concat();
            assert_eq!(got, [&b"head"[..], &big, b"tail"].concat(), "max {max}");
        }
    }

    #[tokio::test]
    async fn vectored_writes_are_coalesced() {
        let (mut s, log) = sends(64, None);
        let parts = [
            IoSlice::new(b"5\r\n"),
            IoSlice::new(b"hello"),
            IoSlice::new(b"\r\n"),
        ];
        let n = s.write_vectored(&parts).await.unwrap();
        assert_eq!(n, 10);
        s.flush().await.unwrap();
        assert_eq!(*log.lock().unwrap(), vec![b"5\r\nhello\r\n".to_vec()]);
    }

    #[tokio::test]
    async fn partial_sends_lose_nothing() {
        let (mut s, log) = sends(32, Some(5));
        let mut want = Vec::new();
        for i in 0..50u8 {
            let piece = vec![i; (i as usize % 40) + 1];
            want.extend_from_slice(&piece);
            s.write_all(&piece).await.unwrap();
        }
        AsyncWriteExt::shutdown(&mut s).await.unwrap();
        let got: Vec<u8> = log.lock().unwrap().concat();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn zero_capacity_writes_straight_through() {
        let (mut s, log) = sends(0, None);
        s.write_all(b"a").await.unwrap();
        assert_eq!(*log.lock().unwrap(), vec![b"a".to_vec()]);
        assert_eq!(s.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn reads_pass_through_under_backpressure() {
        // A real byte pipe with a small window: the writer waits for the reader.
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = LazyWriteBuf::new(Box::new(a), 1460);
        let want: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let send = want.clone();
        let writer = tokio::spawn(async move {
            for chunk in send.chunks(700) {
                s.write_all(chunk).await.unwrap();
            }
            s.flush().await.unwrap();
            s.write_all(b"!").await.unwrap();
            drop(s); // Drop sends what is left when it can.
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(&got[..want.len()], &want[..]);
        assert_eq!(&got[want.len()..], b"!");
    }
}
