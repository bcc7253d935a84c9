//! `until`: wait for a condition with a deadline, reporting the last state seen on timeout.
//! Tests never sleep to wait for something to happen.

use std::time::{Duration, Instant};

#[track_caller]
pub fn until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
