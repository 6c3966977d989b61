//! One connection's queue of frames from the hub: bounded, filled by the
//! hub from any thread, emptied by the connection's session.
//!
//! Not a tokio `mpsc` channel: that one costs ~800 bytes per connection
//! (its cache-padded counters and a first block of 32 slots, held for the
//! connection's life) and a semaphore permit per frame. This is a
//! `VecDeque` under a lock, embedded in the connection's shared state: an
//! idle connection holds an empty deque (no allocation), and a burst's
//! memory is given back once it has drained. The lock is held only to
//! push or pop. The session is woken when the queue goes from empty to
//! not empty; it then takes frames until the queue is empty again.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::Poll;

use futures_util::task::AtomicWaker;

use super::hub::Outbound;

/// A deque that held more than this many frames is freed once it has
/// drained, rather than kept at its largest.
const KEPT_CAPACITY: usize = 16;

#[derive(Default)]
pub struct FrameQueue {
    state: Mutex<State>,
    waker: AtomicWaker,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Arc<Outbound>>,
    /// No frame will be added any more (the hub let go of the connection).
    closed: bool,
    /// The session is gone: frames are refused.
    abandoned: bool,
    /// The session is wanted though no frame came (`nudge`).
    nudged: bool,
}

impl State {
    fn pop(&mut self) -> Result<Option<Arc<Outbound>>, ()> {
        match self.frames.pop_front() {
            Some(frame) => {
                if self.frames.is_empty() && self.frames.capacity() > KEPT_CAPACITY {
                    self.frames = VecDeque::new();
                }
                Ok(Some(frame))
            }
            None if self.closed => Err(()),
            None => Ok(None),
        }
    }
}

/// What the session takes from its queue.
#[derive(Debug)]
pub enum Popped {
    Frame(Arc<Outbound>),
    /// Something else needs the session: the outlet has the end of a
    /// frame to write.
    Nudged,
    /// Closed, and every frame taken.
    Closed,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Full,
    Gone,
}

impl FrameQueue {
    /// Queues a frame unless `limit` frames are waiting already; returns
    /// how many are waiting with it.
    pub fn push(&self, frame: Arc<Outbound>, limit: usize) -> Result<usize, Refused> {
        let mut state = self.state.lock().expect("frame queue lock poisoned");
        if state.abandoned || state.closed {
            return Err(Refused::Gone);
        }
        if state.frames.len() >= limit {
            return Err(Refused::Full);
        }
        state.frames.push_back(frame);
        let waiting = state.frames.len();
        drop(state);
        if waiting == 1 {
            self.waker.wake();
        }
        Ok(waiting)
    }

    /// No more frames will be pushed; the session takes what is queued,
    /// then sees the end.
    pub fn close(&self) {
        self.state.lock().expect("frame queue lock poisoned").closed = true;
        self.waker.wake();
    }

    /// Wakes the session without a frame: its next `pop` says `Nudged`.
    pub fn nudge(&self) {
        self.state.lock().expect("frame queue lock poisoned").nudged = true;
        self.waker.wake();
    }

    /// The session stops taking frames (it is ending).
    pub fn abandon(&self) {
        let mut state = self.state.lock().expect("frame queue lock poisoned");
        state.abandoned = true;
        state.frames = VecDeque::new();
    }

    /// The next frame, if one is waiting now; `Err(())` once the queue is
    /// closed and empty.
    pub fn try_pop(&self) -> Result<Option<Arc<Outbound>>, ()> {
        self.state.lock().expect("frame queue lock poisoned").pop()
    }

    /// Waits for the next frame, a nudge or the end (the session uses
    /// `pop_after`).
    #[cfg(test)]
    pub async fn pop(&self) -> Popped {
        self.pop_after(|| ()).await
    }

    /// `pop`, calling `before_taking` (without this queue's lock held)
    /// once a frame is there, before it is taken: the session closes its
    /// outlet then, so the hub cannot write past a frame just taken.
    pub async fn pop_after(&self, before_taking: impl Fn()) -> Popped {
        poll_fn(|cx| {
            // Registered before looking, so a push after the look wakes us.
            self.waker.register(cx.waker());
            let mut state = self.state.lock().expect("frame queue lock poisoned");
            if std::mem::take(&mut state.nudged) {
                return Poll::Ready(Popped::Nudged);
            }
            if state.frames.is_empty() {
                return if state.closed {
                    Poll::Ready(Popped::Closed)
                } else {
                    Poll::Pending
                };
            }
            drop(state);
            before_taking();
            // Still there: only the session takes frames.
            match self.try_pop() {
                Ok(Some(frame)) => Poll::Ready(Popped::Frame(frame)),
                Ok(None) => Poll::Pending,
                Err(()) => Poll::Ready(Popped::Closed),
            }
        })
        .await
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .expect("frame queue lock poisoned")
            .frames
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(n: usize) -> Arc<Outbound> {
        Arc::new(Outbound {
            position: None,
            json: format!("{n}").into(),
        })
    }

    #[test]
    fn refuses_past_its_limit_and_after_the_session_left() {
        let queue = FrameQueue::default();
        assert_eq!(queue.push(frame(1), 2), Ok(1));
        assert_eq!(queue.push(frame(2), 2), Ok(2));
        assert_eq!(queue.push(frame(3), 2), Err(Refused::Full));
        assert_eq!(queue.len(), 2);
        queue.abandon();
        assert_eq!(queue.push(frame(4), 2), Err(Refused::Gone));
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let queue = FrameQueue::default();
        for n in 0..1000 {
            queue.push(frame(n), 1024).expect("room");
        }
        while let Ok(Some(_)) = queue.try_pop() {}
        let state = queue.state.lock().expect("not poisoned");
        assert_eq!(state.frames.capacity(), 0);
    }

    /// The hook runs once a frame is there, before it is taken, and never
    /// for a nudge or the end.
    #[tokio::test]
    async fn pop_after_runs_its_hook_before_taking_a_frame() {
        let queue = Arc::new(FrameQueue::default());
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let hook = || {
            // The frame is still queued when the hook runs.
            assert_eq!(queue.len(), 1);
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        queue.nudge();
        assert!(matches!(queue.pop_after(hook).await, Popped::Nudged));
        queue.push(frame(1), 4).expect("room");
        assert!(matches!(queue.pop_after(hook).await, Popped::Frame(f) if f.json.as_str() == "1"));
        queue.close();
        assert!(matches!(queue.pop_after(hook).await, Popped::Closed));
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// Frames pushed from another thread arrive in order, every one, and a
    /// closed queue ends only after its last frame was taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_session_gets_every_frame_in_order_then_the_end() {
        let queue = Arc::new(FrameQueue::default());
        let producer = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                for n in 0..10_000 {
                    while queue.push(frame(n), 64) == Err(Refused::Full) {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                queue.close();
            })
        };
        let mut next = 0;
        while let Popped::Frame(got) = tokio::time::timeout(Duration::from_secs(20), queue.pop())
            .await
            .expect("frames keep coming")
        {
            assert_eq!(got.json.as_str(), next.to_string());
            next += 1;
        }
        assert_eq!(next, 10_000);
        producer.join().expect("the producer finished");
    }
}
