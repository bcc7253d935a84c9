//! `FaultProxy`: a TCP proxy between two environments in the tests, standing in for a WAN.
//! It delays every chunk by a one-way latency (a timestamped queue per direction, so chunks
//! keep their order and a burst is not slowed down chunk by chunk), can cut the link
//! (every open connection is closed and new ones are refused until `heal`), drop every
//! byte while keeping connections open (`blackhole`: a partition where packets vanish and
//! nothing is reset), counts the
//! bytes each way and keeps every byte it carried, so a test can check that nothing
//! (password, file content) crosses in clear.
//!
//! It runs on its own thread with its own tokio runtime, so it works the same from a
//! `#[test]` and from a `#[tokio::test]` (whatever the caller's runtime flavour), and its
//! methods are plain synchronous calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Chunks queued per direction before the reader waits (backpressure towards the sender).
const QUEUE: usize = 1024;
const CHUNK: usize = 64 * 1024;

struct Shared {
    target: SocketAddr,
    latency: Duration,
    /// true while cut; the accept loop closes its listening socket then (connections are
    /// refused by the kernel) and binds it again on heal.
    cut: tokio::sync::watch::Sender<bool>,
    listening: AtomicBool,
    /// While set, bytes read are dropped instead of forwarded.
    blackhole: AtomicBool,
    /// Cancelled by `cut`: every connection open at that moment ends.
    generation: Mutex<CancellationToken>,
    open: AtomicUsize,
    up: AtomicU64,
    down: AtomicU64,
    /// One buffer per connection and direction, so a byte sequence stays contiguous.
    streams: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 picks one; see [`FaultProxy::addr`]) and forwards every
    /// connection to `target`, each chunk `one_way_latency` after it was read.
    pub fn start(listen: SocketAddr, target: SocketAddr, one_way_latency: Duration) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind(listen).unwrap_or_else(|e| panic!("fault proxy cannot listen on {listen}: {e}"));
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            latency: one_way_latency,
            cut: tokio::sync::watch::Sender::new(false),
            listening: AtomicBool::new(true),
            blackhole: AtomicBool::new(false),
            generation: Mutex::new(CancellationToken::new()),
            open: AtomicUsize::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            streams: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let (sh, st) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                rt.block_on(async move {
                    let mut listener = Some(TcpListener::from_std(std_listener).unwrap());
                    let mut cut = sh.cut.subscribe();
                    loop {
                        if *cut.borrow_and_update() {
                            // Cut: no listening socket, so connecting is refused.
                            listener = None;
                            sh.listening.store(false, Ordering::SeqCst);
                            tokio::select! {
                                _ = st.cancelled() => break,
                                r = cut.changed() => if r.is_err() { break },
                            }
                            continue;
                        }
                        if listener.is_none() {
                            match rebind(addr, &st).await {
                                Some(l) => listener = Some(l),
                                None => break,
                            }
                            sh.listening.store(true, Ordering::SeqCst);
                        }
                        let l = listener.as_ref().expect("listening");
                        let client = tokio::select! {
                            _ = st.cancelled() => break,
                            _ = cut.changed() => continue,
                            a = l.accept() => match a {
                                Ok((c, _)) => c,
                                Err(_) => continue,
                            },
                        };
                        if *sh.cut.borrow() {
                            drop(client);
                            continue;
                        }
                        let token = sh.generation.lock().unwrap().child_token();
                        let stop = st.clone();
                        let sh = sh.clone();
                        sh.open.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = token.cancelled() => {}
                                _ = stop.cancelled() => {}
                                _ = connection(&sh, client) => {}
                            }
                            sh.open.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                });
                // Dropping the runtime ends (and closes) every connection still open.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .unwrap();
        FaultProxy { addr, shared, stop, thread: Some(thread) }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection and refuses new ones until [`FaultProxy::heal`].
    /// Returns once the open connections are closed.
    pub fn cut(&self) {
        self.shared.cut.send_replace(true);
        let old = std::mem::replace(&mut *self.shared.generation.lock().unwrap(), CancellationToken::new());
        old.cancel();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shared.open.load(Ordering::SeqCst) > 0 || self.shared.listening.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "fault proxy: still listening or connections still open 10 s after cut");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Listens on the same address and forwards connections again. Returns once new
    /// connections are accepted.
    pub fn heal(&self) {
        self.shared.cut.send_replace(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shared.listening.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "fault proxy: cannot listen on {} again within 10 s", self.addr);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Drops every byte from now on (both directions, open connections stay open) until
    /// `unblackhole`: what a partition that drops packets looks like to both ends.
    pub fn blackhole(&self) {
        self.shared.blackhole.store(true, Ordering::SeqCst);
    }

    pub fn unblackhole(&self) {
        self.shared.blackhole.store(false, Ordering::SeqCst);
    }

    /// Every byte carried so far, both directions (one contiguous run per connection and
    /// direction).
    pub fn seen(&self) -> Vec<u8> {
        let streams = self.shared.streams.lock().unwrap();
        let mut all = Vec::new();
        for s in streams.iter() {
            all.extend_from_slice(&s.lock().unwrap());
        }
        all
    }

    /// Bytes delivered (client → target, target → client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.shared.up.load(Ordering::SeqCst), self.shared.down.load(Ordering::SeqCst))
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the proxy's address again after a cut (retrying briefly: the port is ours, but the
/// kernel may take a moment to release it).
async fn rebind(addr: SocketAddr, stop: &CancellationToken) -> Option<TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) if tokio::time::Instant::now() > deadline => panic!("fault proxy cannot listen on {addr} again: {e}"),
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// One proxied connection: ends when both directions ended, or when either side fails.
async fn connection(sh: &Arc<Shared>, client: TcpStream) {
    let Ok(server) = TcpStream::connect(sh.target).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let record = |sh: &Shared| {
        let b = Arc::new(Mutex::new(Vec::new()));
        sh.streams.lock().unwrap().push(b.clone());
        b
    };
    let (up_seen, down_seen) = (record(sh), record(sh));
    let up = pipe(cr, sw, sh.latency, up_seen, &sh.up, &sh.blackhole);
    let down = pipe(sr, cw, sh.latency, down_seen, &sh.down, &sh.blackhole);
    tokio::pin!(up, down);
    // A failed direction (reset, broken pipe) ends the connection; a clean end of one
    // direction (half-close) waits for the other.
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => { if r.is_err() { return } up_done = true; }
            r = &mut down, if !down_done => { if r.is_err() { return } down_done = true; }
        }
    }
}

/// Reads chunks from `from` and writes each to `to` `latency` after it was read. The
/// reader and the writer run concurrently around a queue of (due time, chunk): the writer
/// waits until a chunk's due time, never a full latency per chunk, so throughput is not
/// limited by the latency and order is preserved. End of input is forwarded (as a
/// shutdown of the write half) after the last chunk, with the same delay.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Duration,
    seen: Arc<Mutex<Vec<u8>>>,
    delivered: &AtomicU64,
    hole: &AtomicBool,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Option<Vec<u8>>)>(QUEUE);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            let due = tokio::time::Instant::now() + latency;
            if n == 0 {
                let _ = tx.send((due, None)).await;
                return Ok::<(), std::io::Error>(());
            }
            if hole.load(Ordering::SeqCst) {
                continue;
            }
            seen.lock().unwrap().extend_from_slice(&buf[..n]);
            if tx.send((due, Some(buf[..n].to_vec()))).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match chunk {
                Some(c) => {
                    to.write_all(&c).await?;
                    delivered.fetch_add(c.len() as u64, Ordering::SeqCst);
                }
                None => {
                    to.shutdown().await?;
                    return Ok::<(), std::io::Error>(());
                }
            }
        }
        Ok(())
    };
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}
