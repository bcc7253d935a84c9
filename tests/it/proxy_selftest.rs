//! The fault proxy of the cross-environment tests (`support::proxy`) checked on its own:
//! latency each way without head-of-line delay, byte counts, what it saw, cut and heal.
//! Once from a plain `#[test]` with std sockets, once from a `#[tokio::test]`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::support::poll;
use crate::support::proxy::FaultProxy;

const LATENCY: Duration = Duration::from_millis(60);

/// An echo server on a std thread (one thread per connection).
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn connect(p: &FaultProxy) -> TcpStream {
    let c = TcpStream::connect_timeout(&p.addr(), Duration::from_secs(5)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

fn round_trip(c: &mut TcpStream, msg: &[u8]) -> Duration {
    let t = Instant::now();
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    t.elapsed()
}

#[test]
fn fault_proxy_latency_counts_cut_and_heal() {
    let echo = echo_server();
    let p = FaultProxy::start("127.0.0.1:0".parse().unwrap(), echo, LATENCY);
    let mut c = connect(&p);

    // A round trip crosses the proxy twice.
    let rtt = round_trip(&mut c, b"ping-marker-1");
    assert!(rtt >= 2 * LATENCY, "round trip {rtt:?} is shorter than twice the one-way latency {LATENCY:?}");
    assert!(rtt < 2 * LATENCY + Duration::from_secs(3), "round trip {rtt:?} is far longer than 2 x {LATENCY:?}");

    // A burst of chunks is delayed once, not once per chunk: 20 chunks 5 ms apart arrive
    // about 2 x latency after the last one was sent, not 20 x 2 x latency.
    let mut writer = c.try_clone().unwrap();
    let t = Instant::now();
    let sender = std::thread::spawn(move || {
        for i in 0..20u8 {
            writer.write_all(&[i; 100]).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let mut back = vec![0u8; 2000];
    c.read_exact(&mut back).unwrap();
    let burst = t.elapsed();
    sender.join().unwrap();
    for (i, chunk) in back.chunks(100).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i} out of order");
    }
    assert!(burst >= 2 * LATENCY, "burst took {burst:?}");
    assert!(burst < 10 * LATENCY, "burst took {burst:?}: chunks are delayed one after the other (head-of-line), not in parallel");

    let total = 13 + 2000;
    poll::until("byte counts", Duration::from_secs(5), || if p.bytes() == (total, total) { Ok(()) } else { Err(format!("{:?}", p.bytes())) });
    let seen = p.seen();
    assert_eq!(seen.len() as u64, 2 * total);
    assert_eq!(seen.windows(13).filter(|w| w == b"ping-marker-1").count(), 2, "seen() holds both directions");

    // Cut: the open connection ends and new ones are refused.
    p.cut();
    let mut buf = [0u8; 16];
    match c.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes from a cut connection"),
    }
    assert_eq!(p.open_connections(), 0);
    let refused = TcpStream::connect_timeout(&p.addr(), Duration::from_secs(2));
    assert!(refused.is_err(), "a connection was accepted while the link is cut");
    let before = p.bytes();

    // Heal: the same address works again.
    p.heal();
    let mut c = connect(&p);
    let rtt = round_trip(&mut c, b"after heal");
    assert!(rtt >= 2 * LATENCY);
    poll::until("byte counts after heal", Duration::from_secs(5), || if p.bytes() == (before.0 + 10, before.1 + 10) { Ok(()) } else { Err(format!("{:?}", p.bytes())) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_works_from_async_tests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = echo.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let p = FaultProxy::start("127.0.0.1:0".parse().unwrap(), target, LATENCY);
    let mut c = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let t = Instant::now();
    c.write_all(b"async ping").await.unwrap();
    let mut back = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"async ping");
    assert!(t.elapsed() >= 2 * LATENCY, "{:?}", t.elapsed());

    p.cut();
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut back)).await.expect("a cut connection ends at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(tokio::net::TcpStream::connect(p.addr()).await.is_err(), "accepted while cut");

    p.heal();
    let mut c = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    c.write_all(b"async pong").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"async pong");
    // Dropping the proxy inside a runtime is fine (its runtime lives on its own thread).
    drop(p);
}
