//! Pairing over the wire: length-prefixed JSON frames on a TLS connection, the server
//! side (throttled: a token is taken before the first reply and given back only when the
//! client proves the password) and the client side, both driving the pure state machines
//! of `pairing`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Link;
use super::pairing::{self, Client, PairError, PairMsg, Remote, Server, Step};
use super::tls::{connect_from, pairing_connector, server_name};
use crate::agent::listener::{ByteCounters, Conn, Counted};
use crate::agent::status::LinkState;

/// A pairing exchange must finish within this.
const PAIRING_TIMEOUT: Duration = Duration::from_secs(15);
/// Frames larger than this are refused (a CA and a node list are a few KiB).
const MAX_FRAME: usize = 256 * 1024;

impl Link {
    /// Answers a pairing attempt on the link port.
    pub(super) async fn pair_server(&self, conn: Conn) {
        let (mut tls, addr, refusals, _slot) = conn.into_parts();
        let ip = addr.ip();
        let who = ip.to_string();
        let exporter = match tls.get_ref().1.export_keying_material([0u8; 32], pairing::EXPORTER_LABEL, None) {
            Ok(x) => x,
            Err(e) => return refusals.note(&who, "pairing attempt", &format!("no TLS exporter: {e}")),
        };
        let own_nodes = self.own_nodes();
        // No lock here: this node may be pairing as a client with the same peer at this
        // very moment, and each side must answer the other meanwhile.
        let r = tokio::time::timeout(PAIRING_TIMEOUT, async {
            let hello = read_msg(&mut tls).await?;
            let (mut server, reply) = match Server::on_hello(&self.cfg.password, &exporter, hello) {
                Ok(x) => x,
                Err(Step::Fail(m, why)) => {
                    if let Some(m) = m {
                        let _ = write_msg(&mut tls, &m).await;
                    }
                    anyhow::bail!("{why}");
                }
                Err(other) => anyhow::bail!("BUG: unexpected pairing step {other:?}"),
            };
            // Counted before anything that depends on the password leaves this node.
            let known = self.known_ip(ip);
            let ticket = self.throttle.lock().expect("BUG: poisoned").take(ip, known, Instant::now());
            let mut ticket = match ticket {
                Ok(t) => Some(t),
                Err(wait) => {
                    let _ = write_msg(&mut tls, &PairMsg::Busy { retry_after_s: wait }).await;
                    return Ok(Outcome::Throttled(wait));
                }
            };
            write_msg(&mut tls, &reply).await?;
            loop {
                let m = read_msg(&mut tls).await.context("it left before proving the password (counted as a wrong guess)")?;
                match server.on_message(m, &self.own_ca_pem, &own_nodes) {
                    Step::Proven(m) => {
                        if let Some(t) = ticket.take() {
                            self.throttle.lock().expect("BUG: poisoned").refund(t, known, Instant::now());
                        }
                        write_msg(&mut tls, &m).await?;
                    }
                    Step::Fail(m, why) => {
                        let wrong = m == Some(PairMsg::WrongPassword);
                        if let Some(m) = m {
                            let _ = write_msg(&mut tls, &m).await;
                        }
                        return Ok(if wrong { Outcome::WrongPassword } else { Outcome::Failed(why) });
                    }
                    Step::Paired(remote) => {
                        self.keep_pairing(remote)?;
                        let _ = write_msg(&mut tls, &PairMsg::Done).await;
                        let _ = tls.shutdown().await;
                        return Ok(Outcome::Paired);
                    }
                }
            }
        })
        .await;
        match r {
            Ok(Ok(Outcome::Paired)) => {
                self.log.normal(format!("link: paired with the other environment (asked by {addr}); its CA is pinned"));
                self.set_status(|l| {
                    l.error = None;
                    if l.state == LinkState::Pairing || l.state == LinkState::Refused {
                        l.state = LinkState::Paired;
                    }
                });
            }
            Ok(Ok(Outcome::WrongPassword)) => {
                let msg = format!("a node of the other environment ({addr}) tried to pair with a different password; refused. Give both environments the same password");
                refusals.note(&who, "pairing attempt", "a node of the other environment tried to pair with a different password; give both environments the same password");
                let paired = self.paired();
                self.set_status(|l| {
                    if !paired {
                        l.state = LinkState::Refused;
                    }
                    l.error = Some(msg);
                });
            }
            Ok(Ok(Outcome::Throttled(wait))) => refusals.note(&who, "pairing attempt", &format!("too many pairing attempts; answered only with \"try again in {wait} s\"")),
            Ok(Ok(Outcome::Failed(why))) => refusals.note(&who, "pairing attempt", &why),
            Ok(Err(e)) => refusals.note(&who, "pairing attempt", &format!("{e:#}")),
            Err(_) => refusals.note(&who, "pairing attempt", &format!("not finished within {} s (counted as a wrong guess)", PAIRING_TIMEOUT.as_secs())),
        }
    }

    /// Pairs with the link port at `addr` as the client.
    /// `force` pairs again even when paired: the check that the other side still accepts
    /// the password (after the link failed for a while).
    pub(super) async fn pair_with(&self, addr: &str, force: bool) -> Result<(), PairError> {
        let _guard = self.pair_lock.lock().await;
        if self.paired() && !force {
            return Ok(());
        }
        let remote = attempt_pairing(self.source_ip(), addr, &self.cfg.password, &self.own_ca_pem, self.own_nodes(), Some(self.bytes.clone()), false).await?;
        self.keep_pairing(remote).map_err(|e| PairError::Refused(format!("{e:#}")))
    }
}

enum Outcome {
    Paired,
    WrongPassword,
    Throttled(u64),
    Failed(String),
}

/// One pairing attempt as the client, from `local` to the link port at `addr`, offering
/// `own_ca` and `own_nodes` once the other side proved the password. With
/// `give_up_after_reply` it leaves as soon as the server has answered the hello (a guesser
/// that checks nothing; the tests use it to show such attempts are counted) and returns
/// `Unreachable("gave up")`.
pub async fn attempt_pairing(local: IpAddr, addr: &str, password: &str, own_ca: &str, own_nodes: Vec<String>, counters: Option<ByteCounters>, give_up_after_reply: bool) -> Result<Remote, PairError> {
    let unreachable = |e: &dyn std::fmt::Display| PairError::Unreachable(format!("{e}"));
    let name = server_name(addr).map_err(|e| unreachable(&e))?;
    let r = tokio::time::timeout(PAIRING_TIMEOUT, async {
        let tcp = connect_from(local, addr).await.map_err(|e| unreachable(&e))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = pairing_connector().connect(name, Counted { inner: tcp, counters }).await.map_err(|e| unreachable(&e))?;
        let exporter = tls.get_ref().1.export_keying_material([0u8; 32], pairing::EXPORTER_LABEL, None).map_err(|e| unreachable(&e))?;
        let (mut client, hello) = Client::start(password, &exporter, own_ca, own_nodes);
        write_msg(&mut tls, &hello).await.map_err(|e| unreachable(&e))?;
        let reply = read_msg(&mut tls).await.map_err(|e| unreachable(&e))?;
        if give_up_after_reply {
            return match reply {
                PairMsg::Reply { .. } => Err(PairError::Unreachable("gave up".into())),
                other => Err(client.on_reply(other).err().unwrap_or(PairError::Unreachable("unexpected answer".into()))),
            };
        }
        let confirm = client.on_reply(reply)?;
        write_msg(&mut tls, &confirm).await.map_err(|e| unreachable(&e))?;
        let answer = read_msg(&mut tls).await.map_err(|e| unreachable(&e))?;
        let finish = match client.on_accept(answer) {
            Ok(m) => m,
            Err(PairError::Refused(reason)) => {
                let _ = write_msg(&mut tls, &PairMsg::Refused { reason: reason.clone() }).await;
                return Err(PairError::Refused(reason));
            }
            Err(e) => return Err(e),
        };
        write_msg(&mut tls, &finish).await.map_err(|e| unreachable(&e))?;
        let done = read_msg(&mut tls).await.map_err(|e| unreachable(&e))?;
        let remote = client.on_done(done)?;
        let _ = tls.shutdown().await;
        Ok(remote)
    })
    .await;
    r.unwrap_or_else(|_| Err(PairError::Unreachable(format!("no pairing answer from {addr} within {} s", PAIRING_TIMEOUT.as_secs()))))
}

async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, m: &PairMsg) -> anyhow::Result<()> {
    let body = serde_json::to_vec(m)?;
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<PairMsg> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.context("the other side closed the pairing connection")?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(len <= MAX_FRAME, "pairing message of {len} bytes is too large");
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}
