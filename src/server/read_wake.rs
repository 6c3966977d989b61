//! Which of a session's wake-ups were for its socket.
//!
//! A session's loop polls every branch of its `select!` on each pass, and a
//! light load makes two passes per frame it delivers: polling the
//! WebSocket's read side each time (tungstenite's read, its two waker
//! proxies, the socket's readiness) took ~5 % of the server's CPU at 10k
//! deliveries/s (issue 18). The socket is instead polled with a waker of
//! its own, which notes that it fired before waking the task; a pass with
//! no such note since the socket last said "nothing yet" skips it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use futures_util::{Stream, StreamExt};

pub struct ReadWake {
    shared: Arc<Shared>,
    /// Wakes through `shared`: the waker the socket is polled with.
    waker: Waker,
}

struct Shared {
    /// The socket may have something: it woke us, or its last poll gave an
    /// item (more may be buffered without a new wake-up).
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl ReadWake {
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(shared.clone());
        Self { shared, waker }
    }

    /// `stream.poll_next`, skipped (Pending) when the stream has not woken
    /// us since it last returned Pending. The task is woken when it does.
    pub fn poll_next<S: Stream + Unpin>(
        &self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Option<S::Item>> {
        // Registered before the note is read: a wake-up between the two
        // then still reaches the task.
        self.shared.task.register(cx.waker());
        if !self.shared.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = stream.poll_next_unpin(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            self.shared.woken.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use tokio::sync::mpsc;

    /// A channel's receiver as a `Stream`, woken as a socket would be.
    fn receiver<T>(mut rx: mpsc::UnboundedReceiver<T>) -> impl Stream<Item = T> + Unpin {
        stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn reads_everything_buffered_then_waits_for_a_wake_up() {
        let wake = ReadWake::new();
        let mut items = stream::iter([1, 2, 3]);
        let mut got = Vec::new();
        while let Some(item) = std::future::poll_fn(|cx| wake.poll_next(&mut items, cx)).await {
            got.push(item);
        }
        assert_eq!(got, [1, 2, 3]);
    }

    #[tokio::test]
    async fn skips_the_stream_until_it_wakes_the_task_then_delivers() {
        let wake = ReadWake::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut rx = receiver(rx);
        let noop = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&noop);
        // Nothing yet: polled once, then skipped without touching it.
        assert!(wake.poll_next(&mut rx, &mut cx).is_pending());
        assert!(!wake.shared.woken.load(Ordering::Acquire));
        assert!(wake.poll_next(&mut rx, &mut cx).is_pending());
        // A send wakes the socket's waker: the note is set, the item comes.
        tx.send(7).expect("receiver alive");
        assert!(wake.shared.woken.load(Ordering::Acquire));
        let reader =
            tokio::spawn(
                async move { std::future::poll_fn(|cx| wake.poll_next(&mut rx, cx)).await },
            );
        assert_eq!(reader.await.expect("reader task"), Some(7));
    }

    #[tokio::test]
    async fn a_task_waiting_on_a_quiet_stream_is_woken_by_its_next_item() {
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let wake = ReadWake::new();
            let mut rx = receiver(rx);
            let mut got = Vec::new();
            while let Some(item) = std::future::poll_fn(|cx| wake.poll_next(&mut rx, cx)).await {
                got.push(item);
            }
            got
        });
        for i in 0..100 {
            tx.send(i).expect("reader alive");
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("the reader saw every item and the end")
            .expect("reader task");
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
}
