//! Paces how fast a session reads its socket: one token per inbound frame,
//! of any type (`--frame-rate`).
//!
//! A frame is read only once a token is in hand, so the frames a
//! connection gets processed never exceed `burst + rate × elapsed`. When the
//! bucket is empty the session simply stops reading that socket until a
//! token is back: the client's frames wait in the kernel's buffers, then TCP
//! slows the client itself. Back-pressure rather than an error reply or a
//! close, because a reply to every excess frame would let a flood buy
//! server work and outgoing traffic, and a close would make an honest but
//! bursty client reconnect and resync, which costs more than waiting. The
//! frames already queued for the connection (live entries, acks) keep
//! flowing meanwhile; only reading pauses.

use std::pin::Pin;
use std::time::Instant;

use tokio::time::Sleep;

use super::limits::TokenBucket;
use crate::config::Rate;

pub struct ReadPacer {
    bucket: TokenBucket,
    /// A token already taken for the next frame.
    holds_token: bool,
    /// Set while reading is paused; resolves when a token is back.
    pause: Option<Pin<Box<Sleep>>>,
}

impl ReadPacer {
    pub fn new(rate: Rate) -> Self {
        Self {
            bucket: TokenBucket::new(rate, Instant::now()),
            holds_token: false,
            pause: None,
        }
    }

    /// Whether the next frame may be read now. Takes a token if none is in
    /// hand; if there is none to take, starts a pause and counts it.
    pub fn may_read(&mut self) -> bool {
        if self.holds_token {
            return true;
        }
        if self.pause.is_some() {
            return false;
        }
        match self.bucket.take(Instant::now()) {
            Ok(()) => {
                self.holds_token = true;
                true
            }
            Err(wait) => {
                super::metrics::rate_limited("frames");
                self.pause = Some(Box::pin(tokio::time::sleep(wait)));
                false
            }
        }
    }

    /// Spends the token on a frame just read.
    pub fn spend(&mut self) {
        self.holds_token = false;
    }

    pub fn is_paused(&self) -> bool {
        self.pause.is_some()
    }

    /// Resolves when the current pause is over (never, if there is none).
    pub async fn resumed(&mut self) {
        match self.pause.as_mut() {
            Some(pause) => {
                pause.await;
                self.pause = None;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_pause_once_the_burst_is_spent_and_resume_with_a_token() {
        let mut pacer = ReadPacer::new(Rate::new(100.0, 3));
        for _ in 0..3 {
            assert!(pacer.may_read());
            assert!(pacer.may_read(), "a held token is not taken twice");
            pacer.spend();
        }
        assert!(!pacer.may_read(), "the burst is spent");
        assert!(pacer.is_paused());
        pacer.resumed().await;
        assert!(!pacer.is_paused());
        assert!(pacer.may_read(), "the pause lasts until a token is back");
    }
}
