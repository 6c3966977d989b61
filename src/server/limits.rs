//! Limits on what one client can make the server do: token buckets for
//! message rates and authentication attempts per address, and counters of
//! concurrent connections per address and sessions per user.
//!
//! Every table is bounded by `Limits::max_tracked`: a bucket that has
//! refilled completely is the same as no bucket, so those are forgotten
//! first; if the table is still full of active entries, newcomers are
//! refused for a second rather than letting memory grow. IPv6 addresses are
//! counted per /64, the block one subscriber usually gets, so rotating
//! through one's own addresses does not help.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warp::Filter;
use warp::http::{HeaderMap, StatusCode};

use super::auth::LoginThrottle;
use super::error::ApiError;
use super::{AppState, PeerAddr};
use crate::config::{Limits, Rate};
use crate::store::UserId;

/// Longest wait ever reported, so a misconfigured rate cannot overflow.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// `burst` tokens, refilled continuously at `per_sec`; each action takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            last: now,
        }
    }

    fn available(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate.per_sec).min(f64::from(self.rate.burst))
    }

    /// Takes a token, or says how long until one will be there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.tokens = self.available(now);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let per_sec = self.rate.per_sec.max(f64::MIN_POSITIVE);
        let wait = Duration::try_from_secs_f64((1.0 - self.tokens) / per_sec).unwrap_or(MAX_WAIT);
        Err(wait.clamp(Duration::from_millis(1), MAX_WAIT))
    }

    fn is_full(&self, now: Instant) -> bool {
        self.available(now) >= f64::from(self.rate.burst)
    }
}

/// One token bucket per key (address or user), in a bounded table.
pub struct KeyedBuckets<K> {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys: max_keys.max(1),
            buckets: Mutex::default(),
        }
    }

    pub fn take(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate table lock poisoned");
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            buckets.retain(|_, bucket| !bucket.is_full(now));
            if buckets.len() >= self.max_keys {
                return Err(Duration::from_secs(1));
            }
        }
        buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(self.rate, now))
            .take(now)
    }

    pub fn tracked(&self) -> usize {
        self.buckets.lock().expect("rate table lock poisoned").len()
    }
}

/// At most `max` holders per key at once (connections per address,
/// sessions per user). A key's entry exists only while it holds a slot.
pub struct Slots<K: Hash + Eq> {
    max: usize,
    counts: Mutex<HashMap<K, usize>>,
}

/// One held slot; dropping it gives the slot back.
pub struct Slot<K: Hash + Eq> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::default(),
        })
    }

    pub fn try_acquire(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut counts = self.counts.lock().expect("slot table lock poisoned");
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: Arc::clone(self),
            key,
        })
    }

    pub fn held(&self, key: &K) -> usize {
        let counts = self.counts.lock().expect("slot table lock poisoned");
        counts.get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().expect("slot table lock poisoned");
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Every limiter of one running server.
pub struct Limiter {
    pub config: Limits,
    user_messages: KeyedBuckets<UserId>,
    registrations: KeyedBuckets<IpAddr>,
    logins: KeyedBuckets<IpAddr>,
    pub login_failures_by_ip: LoginThrottle,
    connections: Arc<Slots<IpAddr>>,
    sessions: Arc<Slots<UserId>>,
}

impl Limiter {
    pub fn new(config: Limits) -> Self {
        Self {
            user_messages: KeyedBuckets::new(config.messages_per_user, config.max_tracked),
            registrations: KeyedBuckets::new(config.registrations_per_ip, config.max_tracked),
            logins: KeyedBuckets::new(config.logins_per_ip, config.max_tracked),
            login_failures_by_ip: LoginThrottle::new(config.login_failures_per_ip_before_delay),
            connections: Slots::new(config.connections_per_ip),
            sessions: Slots::new(config.sessions_per_user),
            config,
        }
    }

    /// A bucket for one connection's `send` frames.
    pub fn connection_bucket(&self) -> TokenBucket {
        TokenBucket::new(self.config.messages_per_connection, Instant::now())
    }

    /// Takes one `send` from the connection's bucket and the user's.
    pub fn take_message(&self, connection: &mut TokenBucket, user: UserId) -> Result<(), Duration> {
        connection.take(Instant::now())?;
        self.user_messages.take(&user)
    }

    pub fn connection_slot(&self, ip: IpAddr) -> Option<Slot<IpAddr>> {
        self.connections.try_acquire(ip)
    }

    pub fn session_slot(&self, user: UserId) -> Option<Slot<UserId>> {
        self.sessions.try_acquire(user)
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

/// The client's address key: the TCP peer, or, when configured, the last
/// entry of the header a trusted reverse proxy sets.
pub fn client_ip(
    state: &AppState,
) -> impl Filter<Extract = (IpAddr,), Error = Infallible> + Clone + use<> {
    let header = state.limits.config.trust_proxy_header.clone();
    warp::ext::optional::<PeerAddr>()
        .and(warp::header::headers_cloned())
        .map(move |peer: Option<PeerAddr>, headers: HeaderMap| {
            let forwarded = header
                .as_deref()
                .and_then(|name| headers.get(name))
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.rsplit(',').next())
                .and_then(|last| last.trim().parse::<IpAddr>().ok());
            let ip = forwarded
                .or(peer.map(|PeerAddr(p)| p.ip()))
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            address_key(ip)
        })
}

fn rate_limited(wait: Duration, what: &str) -> warp::Rejection {
    super::metrics::rate_limited(what);
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many {what} attempts from your address; wait and retry"),
    );
    err.retry_after_secs = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
    warp::reject::custom(err)
}

/// Passes a registration challenge or registration unless the address has
/// used up its allowance.
pub fn admit_registration(
    state: &AppState,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone + use<> {
    let state = state.clone();
    client_ip(&state)
        .and_then(move |ip: IpAddr| {
            let result = state
                .limits
                .registrations
                .take(&ip)
                .map_err(|wait| rate_limited(wait, "registration"));
            std::future::ready(result)
        })
        .untuple_one()
}

/// Passes a login attempt unless the address has used up its allowance or
/// is being delayed after failures; yields the address so failures can be
/// counted against it.
pub fn admit_login(
    state: &AppState,
) -> impl Filter<Extract = (IpAddr,), Error = warp::Rejection> + Clone + use<> {
    let state = state.clone();
    client_ip(&state).and_then(move |ip: IpAddr| {
        let limits = &state.limits;
        let result = limits
            .login_failures_by_ip
            .check(&ip.to_string())
            .and_then(|()| limits.logins.take(&ip))
            .map(|()| ip)
            .map_err(|wait| rate_limited(wait, "login"));
        std::future::ready(result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_retry() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(Rate::new(2.0, 3), start);
        for _ in 0..3 {
            assert!(bucket.take(start).is_ok());
        }
        let wait = bucket.take(start).expect_err("the burst is used up");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(bucket.take(start + Duration::from_millis(500)).is_ok());
        assert!(bucket.take(start + Duration::from_millis(500)).is_err());
        // A long pause refills to the burst, never beyond.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take(later).is_ok());
        }
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn a_zero_rate_reports_a_bounded_wait() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(Rate::new(0.0, 1), now);
        assert!(bucket.take(now).is_ok());
        assert_eq!(bucket.take(now), Err(MAX_WAIT));
    }

    #[test]
    fn keyed_buckets_stay_within_their_table_size() {
        let buckets = KeyedBuckets::new(Rate::new(0.001, 1), 100);
        for key in 0..100u32 {
            assert!(buckets.take(&key).is_ok());
        }
        // The table is full of active (empty) buckets: a newcomer waits,
        // and the table does not grow.
        assert!(buckets.take(&1000).is_err());
        assert_eq!(buckets.tracked(), 100);
        // Known keys are still limited as before.
        assert!(buckets.take(&5).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_to_make_room() {
        let buckets = KeyedBuckets::new(Rate::new(1e9, 1), 10);
        for key in 0..10u32 {
            assert!(buckets.take(&key).is_ok());
        }
        std::thread::sleep(Duration::from_millis(2));
        assert!(buckets.take(&99).is_ok(), "refilled buckets make room");
        assert!(buckets.tracked() <= 10);
    }

    #[test]
    fn slots_are_bounded_per_key_and_given_back_on_drop() {
        let slots = Slots::new(2);
        let a = slots.try_acquire("a").expect("first");
        let b = slots.try_acquire("a").expect("second");
        assert!(slots.try_acquire("a").is_none());
        assert!(slots.try_acquire("b").is_some());
        drop(a);
        assert_eq!(slots.held(&"a"), 1);
        let _c = slots.try_acquire("a").expect("a slot came back");
        drop(b);
        assert_eq!(slots.held(&"b"), 0, "an unused key leaves no entry");
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("valid");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("valid");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("valid");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("valid");
        assert_eq!(
            address_key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("valid")
        );
    }
}
