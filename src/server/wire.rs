//! Text frames written straight to the socket, from the buffers the hub
//! already shares between recipients.
//!
//! tungstenite copies every outgoing frame into a per-connection buffer
//! that grows to the largest write it ever held and never shrinks: a
//! connection that once got a 15 KB presence snapshot of a 1,000-member
//! room kept 15 KB for life, and every fan-out frame was copied once per
//! recipient. Here a batch of frames goes out in one `writev` of their
//! headers and shared payloads: no copy, and nothing kept between writes.
//!
//! tungstenite still reads the socket and writes the control frames it
//! owns (ping, pong, close). The caller flushes it before writing here, so
//! its frames and these never interleave.

use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// FIN + text opcode (RFC 6455 §5.2).
const FIN_TEXT: u8 = 0x81;
/// The longest header of an unmasked frame: 2 bytes, then a 64-bit length.
const MAX_HEADER: usize = 10;
/// Frames per `writev`: two slices each, within Linux's IOV_MAX of 1024.
const FRAMES_PER_WRITE: usize = 256;

/// The header of an unmasked, unfragmented text frame of `len` bytes.
pub(super) fn header(len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = FIN_TEXT;
    let used = if len < 126 {
        h[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, used)
}

/// Writes `frames` as text frames, in order, and flushes.
pub async fn write_text_frames<W: AsyncWrite + Unpin>(
    io: &mut W,
    frames: &[Utf8Bytes],
) -> io::Result<()> {
    if let [frame] = frames {
        // The common case at light load: no allocation.
        let (h, used) = header(frame.len());
        let mut slices = [IoSlice::new(&h[..used]), IoSlice::new(frame.as_bytes())];
        write_all_vectored(io, &mut slices).await?;
        return io.flush().await;
    }
    for group in frames.chunks(FRAMES_PER_WRITE) {
        let headers: Vec<([u8; MAX_HEADER], usize)> =
            group.iter().map(|frame| header(frame.len())).collect();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(group.len() * 2);
        for ((h, used), frame) in headers.iter().zip(group) {
            slices.push(IoSlice::new(&h[..*used]));
            if !frame.is_empty() {
                slices.push(IoSlice::new(frame.as_bytes()));
            }
        }
        write_all_vectored(io, &mut slices).await?;
    }
    io.flush().await
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    let mut left = slices;
    while !left.is_empty() {
        let written = io.write_vectored(left).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, written);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        assert_eq!(header(0).1, 2);
        assert_eq!(&header(125).0[..2], &[0x81, 125]);
        assert_eq!(&header(126).0[..4], &[0x81, 126, 0, 126]);
        assert_eq!(&header(65_535).0[..4], &[0x81, 126, 0xff, 0xff]);
        let (h, used) = header(65_536);
        assert_eq!(used, 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    /// A single frame larger than the pipe goes out whole, and an empty one.
    #[tokio::test]
    async fn a_websocket_client_reads_single_frames() {
        let (mut server, client) = tokio::io::duplex(1024);
        let big: Utf8Bytes = "x".repeat(70_000).into();
        let writer = tokio::spawn({
            let big = big.clone();
            async move {
                write_text_frames(&mut server, &[big])
                    .await
                    .expect("written");
                write_text_frames(&mut server, &[Utf8Bytes::from("")])
                    .await
                    .expect("written");
                server
            }
        });
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        for want in [big.as_str(), ""] {
            match client.next().await {
                Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), want),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
        drop(writer.await.expect("the writer finished"));
    }

    /// A real tungstenite client reads, in order, every frame written here:
    /// each length encoding, an empty frame, multi-byte text, and more
    /// frames than one `writev` takes, through a pipe smaller than they are.
    #[tokio::test]
    async fn a_websocket_client_reads_every_frame_in_order() {
        let mut frames: Vec<Utf8Bytes> = [0, 1, 125, 126, 127, 65_535, 65_536, 200_000]
            .into_iter()
            .map(|len| "é".repeat(len / 2).into())
            .collect();
        frames.extend((0..600).map(|i| Utf8Bytes::from(format!("frame {i}"))));
        let (mut server, client) = tokio::io::duplex(4096);
        let expected = frames.clone();
        let writer = tokio::spawn(async move {
            write_text_frames(&mut server, &frames)
                .await
                .expect("written");
            server
        });
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        for want in &expected {
            match client.next().await {
                Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), want.as_str()),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
        drop(writer.await.expect("the writer finished"));
    }
}
