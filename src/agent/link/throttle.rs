//! How many pairing guesses a link port answers: token buckets, time passed in.
//!
//! Every pairing attempt takes a token before the server sends its first reply, and
//! gives it back only when the client proves the password; an attempt that fails or just
//! disconnects keeps it spent. Buckets:
//! - per source address ([`SOURCE`]);
//! - a global ceiling shared by all addresses the link does not know ([`GLOBAL`]);
//! - the other environment's known addresses (the configured remote and the nodes learned
//!   at pairing) have their own buckets ([`KNOWN`]) and never touch the global one, so
//!   strangers who exhaust it cannot keep the real other side from pairing again.
//!
//! A stranger thus gets at most `GLOBAL.burst` guesses at once and `GLOBAL.per_hour`
//! an hour after that, from any number of addresses: 1,000 guesses take over 2.5 hours.
//! After pairing the other side connects with mutual TLS and never needs a token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub burst: f64,
    pub per_hour: f64,
}

pub const SOURCE: Rate = Rate { burst: 5.0, per_hour: 60.0 };
pub const GLOBAL: Rate = Rate { burst: 20.0, per_hour: 360.0 };
pub const KNOWN: Rate = Rate { burst: 5.0, per_hour: 60.0 };
/// Addresses remembered at once; full buckets are forgotten first.
const MAX_SOURCES: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket { tokens: rate.burst, at: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_hour / 3600.0).min(rate.burst);
        self.at = now;
    }

    /// Seconds until one token is available.
    fn wait(&self, rate: Rate) -> u64 {
        (((1.0 - self.tokens) * 3600.0 / rate.per_hour).ceil() as u64).max(1)
    }
}

/// A token taken for one attempt, to give back if the client proves the password.
#[derive(Debug)]
pub struct Ticket {
    ip: IpAddr,
    global: bool,
}

pub struct Throttle {
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

impl Throttle {
    pub fn new(now: Instant) -> Throttle {
        Throttle { sources: HashMap::new(), global: Bucket::full(GLOBAL, now) }
    }

    /// Takes a token for an attempt from `ip`, or says how many seconds to wait.
    pub fn take(&mut self, ip: IpAddr, known: bool, now: Instant) -> Result<Ticket, u64> {
        let rate = if known { KNOWN } else { SOURCE };
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_SOURCES {
            self.forget_full(now);
        }
        let mut src = self.sources.get(&ip).copied().unwrap_or_else(|| Bucket::full(rate, now));
        src.refill(rate, now);
        self.global.refill(GLOBAL, now);
        if src.tokens < 1.0 {
            self.sources.insert(ip, src);
            return Err(src.wait(rate));
        }
        if !known && self.global.tokens < 1.0 {
            self.sources.insert(ip, src);
            return Err(self.global.wait(GLOBAL));
        }
        src.tokens -= 1.0;
        if !known {
            self.global.tokens -= 1.0;
        }
        if self.sources.len() < MAX_SOURCES || self.sources.contains_key(&ip) {
            self.sources.insert(ip, src);
        }
        Ok(Ticket { ip, global: !known })
    }

    /// The client proved the password: its attempt was no guess.
    pub fn refund(&mut self, t: Ticket, known: bool, now: Instant) {
        let rate = if known { KNOWN } else { SOURCE };
        if let Some(b) = self.sources.get_mut(&t.ip) {
            b.refill(rate, now);
            b.tokens = (b.tokens + 1.0).min(rate.burst);
        }
        if t.global {
            self.global.refill(GLOBAL, now);
            self.global.tokens = (self.global.tokens + 1.0).min(GLOBAL.burst);
        }
    }

    fn forget_full(&mut self, now: Instant) {
        self.sources.retain(|_, b| {
            let mut c = *b;
            c.refill(SOURCE.min_rate(KNOWN), now);
            c.tokens < SOURCE.burst.min(KNOWN.burst)
        });
    }
}

impl Rate {
    /// The slower of two rates (to decide conservatively that a bucket is full again).
    fn min_rate(self, other: Rate) -> Rate {
        Rate { burst: self.burst.min(other.burst), per_hour: self.per_hour.min(other.per_hour) }
    }
}

/// The time a stranger needs for `n` wrong guesses at the limits above.
pub fn time_for_guesses(n: u64) -> Duration {
    let after_burst = (n as f64 - GLOBAL.burst).max(0.0);
    Duration::from_secs_f64(after_burst * 3600.0 / GLOBAL.per_hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_thousand_guesses_take_more_than_an_hour_from_any_number_of_addresses() {
        let t0 = Instant::now();
        let mut th = Throttle::new(t0);
        let mut answered = 0u64;
        let mut now = t0;
        // One attempt per second from a new address each time, for an hour.
        for i in 0..3600u32 {
            now = t0 + Duration::from_secs(u64::from(i));
            if th.take(IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]), false, now).is_ok() {
                answered += 1;
            }
        }
        assert!(answered <= (GLOBAL.burst + GLOBAL.per_hour) as u64 + 1, "{answered} guesses answered in an hour");
        assert!(time_for_guesses(1000) > Duration::from_secs(3600));
        let _ = now;
    }

    #[test]
    fn one_address_is_limited_on_its_own() {
        let t0 = Instant::now();
        let mut th = Throttle::new(t0);
        for _ in 0..5 {
            th.take(ip("10.0.0.9"), false, t0).unwrap();
        }
        let wait = th.take(ip("10.0.0.9"), false, t0).unwrap_err();
        assert_eq!(wait, 60);
        assert!(th.take(ip("10.0.0.10"), false, t0).is_ok(), "another address still has its own budget");
        assert!(th.take(ip("10.0.0.9"), false, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn strangers_cannot_lock_out_the_known_other_side() {
        let t0 = Instant::now();
        let mut th = Throttle::new(t0);
        for i in 0..100u8 {
            let _ = th.take(IpAddr::from([10, 1, 0, i]), false, t0);
        }
        assert!(th.take(ip("10.2.0.1"), false, t0).is_err(), "the global ceiling is reached");
        let t = th.take(ip("192.0.2.7"), true, t0).expect("the other environment's node still pairs");
        th.refund(t, true, t0);
        for _ in 0..5 {
            assert!(th.take(ip("192.0.2.7"), true, t0).is_ok());
        }
    }

    #[test]
    fn a_proven_attempt_gives_its_token_back() {
        let t0 = Instant::now();
        let mut th = Throttle::new(t0);
        for _ in 0..20 {
            let t = th.take(ip("10.0.0.1"), false, t0).unwrap();
            th.refund(t, false, t0);
        }
        assert!(th.take(ip("10.0.0.1"), false, t0).is_ok());
    }
}
