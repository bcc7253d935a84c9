//! The pairing protocol, without IO: SPAKE2 over the shared password, key confirmation
//! bound to the TLS session, and the exchange of each environment's CA and node list.
//!
//! ```text
//!  client                                   server
//!  Hello { version, spake_a }        ──▶   counts a failure for the source (throttle)
//!                                    ◀──   Reply { spake_b }
//!  ClientConfirm { mac_c }           ──▶   wrong: WrongPassword (the failure stays counted)
//!                                    ◀──   right: the failure is cleared;
//!                                          Accept { mac_s, server CA, server nodes }
//!  Finish { mac_f, client CA, nodes }──▶   pins the client's CA
//!                                    ◀──   Done
//!  pins the server's CA
//! ```
//!
//! The client proves the password first, so the server's answer tells a guessing client
//! nothing until it has been counted, and neither side sends its CA or node list before
//! the other has proven the password. Every MAC is keyed by the SPAKE2 key and covers the
//! TLS exporter of this session (a relay terminating TLS on both sides fails), both SPAKE2
//! messages, and the CA and nodes it vouches for. A listener or a man in the middle gets
//! at most one online guess per attempt and nothing to test offline.

use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Identity, Password, Spake2};

pub const VERSION: u32 = 2;
/// The ALPN names the framing; the protocol version travels in `Hello` (so an agent of
/// another version is told to upgrade instead of failing the TLS handshake).
pub const ALPN: &[u8] = b"filesync-pair/1";
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-filesync-link-pairing";

/// Messages of the pairing exchange (length-prefixed JSON frames on the wire).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub enum PairMsg {
    Hello {
        version: u32,
        spake: Vec<u8>,
    },
    Reply {
        spake: Vec<u8>,
    },
    ClientConfirm {
        mac: [u8; 32],
    },
    Accept {
        mac: [u8; 32],
        ca_pem: String,
        nodes: Vec<String>,
    },
    Finish {
        mac: [u8; 32],
        ca_pem: String,
        nodes: Vec<String>,
    },
    Done,
    /// The client's proof did not verify: the passwords differ.
    WrongPassword,
    /// Too many recent attempts; ask again after this many seconds.
    Busy {
        retry_after_s: u64,
    },
    Refused {
        reason: String,
    },
}

/// The other environment, as learned from a confirmed pairing.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    pub ca_pem: String,
    pub nodes: Vec<String>,
}

/// How a pairing attempt ended, from the side that reports it.
#[derive(Debug, PartialEq)]
pub enum PairError {
    /// The passwords differ (said in words by the caller).
    Mismatch,
    /// The other side refused, with its reason.
    Refused(String),
    /// Too many recent attempts at the other side; nothing is wrong with the pairing.
    Busy(u64),
    Unreachable(String),
}

fn spake_ids() -> (Identity, Identity) {
    (Identity::new(b"filesync-link-client"), Identity::new(b"filesync-link-server"))
}

/// The session's transcript: the TLS exporter and both SPAKE2 messages.
fn transcript(exporter: &[u8], msg_a: &[u8], msg_b: &[u8]) -> [u8; 32] {
    digest("filesync link pairing transcript v2", &[exporter, msg_a, msg_b])
}

fn digest(context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(context);
    for part in parts {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

/// A MAC by `side` over the transcript and what it vouches for (a CA and a node list).
fn mac(key: &[u8], side: &str, t: &[u8; 32], ca: &str, nodes: &[String]) -> [u8; 32] {
    let k = blake3::derive_key(&format!("filesync link pairing confirm {side} v2"), key);
    let body = digest("filesync link pairing vouched v2", &[t, ca.as_bytes(), nodes.join("\n").as_bytes()]);
    *blake3::keyed_hash(&k, &body).as_bytes()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // blake3::Hash compares in constant time.
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

fn same_ca(a: &str, b: &str) -> bool {
    a.trim() == b.trim()
}

pub const SAME_ENVIRONMENT: &str = "this address is a node of your own environment; name a node of the other environment";

/// The asking side.
pub struct Client {
    spake: Option<Spake2<Ed25519Group>>,
    msg_a: Vec<u8>,
    exporter: Vec<u8>,
    key: Vec<u8>,
    t: [u8; 32],
    own_ca: String,
    own_nodes: Vec<String>,
    remote: Option<Remote>,
}

impl Client {
    pub fn start(password: &str, exporter: &[u8], own_ca: &str, own_nodes: Vec<String>) -> (Client, PairMsg) {
        let (a, b) = spake_ids();
        let (spake, msg_a) = Spake2::<Ed25519Group>::start_a(&Password::new(password.as_bytes()), &a, &b);
        let hello = PairMsg::Hello { version: VERSION, spake: msg_a.clone() };
        (Client { spake: Some(spake), msg_a, exporter: exporter.to_vec(), key: vec![], t: [0; 32], own_ca: own_ca.to_owned(), own_nodes, remote: None }, hello)
    }

    /// The server's reply: the client's proof of the password goes first.
    pub fn on_reply(&mut self, m: PairMsg) -> Result<PairMsg, PairError> {
        let msg_b = match m {
            PairMsg::Reply { spake } => spake,
            other => return Err(unexpected(other)),
        };
        let spake = self.spake.take().ok_or_else(|| PairError::Refused("pairing reply out of order".into()))?;
        self.key = spake.finish(&msg_b).map_err(|e| PairError::Refused(format!("bad pairing message: {e:?}")))?;
        self.t = transcript(&self.exporter, &self.msg_a, &msg_b);
        Ok(PairMsg::ClientConfirm { mac: mac(&self.key, "client", &self.t, "", &[]) })
    }

    /// The server's verdict on the proof; on success its own proof, CA and nodes.
    pub fn on_accept(&mut self, m: PairMsg) -> Result<PairMsg, PairError> {
        let (server_mac, ca_pem, nodes) = match m {
            PairMsg::Accept { mac, ca_pem, nodes } => (mac, ca_pem, nodes),
            other => return Err(unexpected(other)),
        };
        if !same(&server_mac, &mac(&self.key, "server", &self.t, &ca_pem, &nodes)) {
            return Err(PairError::Refused("the other side's confirmation does not verify (a relay in between?)".into()));
        }
        if same_ca(&ca_pem, &self.own_ca) {
            return Err(PairError::Refused(SAME_ENVIRONMENT.into()));
        }
        self.remote = Some(Remote { ca_pem, nodes });
        Ok(PairMsg::Finish { mac: mac(&self.key, "client-finish", &self.t, &self.own_ca, &self.own_nodes), ca_pem: self.own_ca.clone(), nodes: self.own_nodes.clone() })
    }

    /// The server kept the pairing: the client keeps it too.
    pub fn on_done(self, m: PairMsg) -> Result<Remote, PairError> {
        match m {
            PairMsg::Done => self.remote.ok_or_else(|| PairError::Refused("pairing finished out of order".into())),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(m: PairMsg) -> PairError {
    match m {
        PairMsg::WrongPassword => PairError::Mismatch,
        PairMsg::Busy { retry_after_s } => PairError::Busy(retry_after_s),
        PairMsg::Refused { reason } => PairError::Refused(reason),
        other => PairError::Unreachable(format!("unexpected pairing message {}", name(&other))),
    }
}

fn name(m: &PairMsg) -> &'static str {
    match m {
        PairMsg::Hello { .. } => "Hello",
        PairMsg::Reply { .. } => "Reply",
        PairMsg::ClientConfirm { .. } => "ClientConfirm",
        PairMsg::Accept { .. } => "Accept",
        PairMsg::Finish { .. } => "Finish",
        PairMsg::Done => "Done",
        PairMsg::WrongPassword => "WrongPassword",
        PairMsg::Busy { .. } => "Busy",
        PairMsg::Refused { .. } => "Refused",
    }
}

/// What the server does after a message.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send this (if anything) and close: the attempt failed, its failure stays counted.
    Fail(Option<PairMsg>, String),
    /// The client proved the password: clear its failure, send this and wait.
    Proven(PairMsg),
    /// Paired: keep the other environment, send `Done` and close.
    Paired(Remote),
}

/// The answering side. The caller counts a failure before sending the first reply and
/// clears it on [`Step::Proven`].
pub struct Server {
    key: Vec<u8>,
    t: [u8; 32],
    proven: bool,
}

impl Server {
    /// The client's hello. The reply may only be sent once a failure has been counted.
    pub fn on_hello(password: &str, exporter: &[u8], m: PairMsg) -> Result<(Server, PairMsg), Step> {
        let msg_a = match m {
            PairMsg::Hello { version: VERSION, spake } => spake,
            PairMsg::Hello { version, .. } => {
                let reason = format!("pairing protocol version {version} is not supported (this node speaks {VERSION}); upgrade both environments");
                return Err(Step::Fail(Some(PairMsg::Refused { reason: reason.clone() }), reason));
            }
            other => return Err(Step::Fail(None, format!("expected a pairing hello, got {}", name(&other)))),
        };
        let (a, b) = spake_ids();
        let (spake, msg_b) = Spake2::<Ed25519Group>::start_b(&Password::new(password.as_bytes()), &a, &b);
        let key = spake.finish(&msg_a).map_err(|e| Step::Fail(None, format!("bad pairing message: {e:?}")))?;
        let t = transcript(exporter, &msg_a, &msg_b);
        Ok((Server { key, t, proven: false }, PairMsg::Reply { spake: msg_b }))
    }

    /// Every later message of the client.
    pub fn on_message(&mut self, m: PairMsg, own_ca: &str, own_nodes: &[String]) -> Step {
        match (self.proven, m) {
            (false, PairMsg::ClientConfirm { mac: c }) => {
                if !same(&c, &mac(&self.key, "client", &self.t, "", &[])) {
                    return Step::Fail(Some(PairMsg::WrongPassword), "the password differs".into());
                }
                self.proven = true;
                Step::Proven(PairMsg::Accept { mac: mac(&self.key, "server", &self.t, own_ca, own_nodes), ca_pem: own_ca.to_owned(), nodes: own_nodes.to_vec() })
            }
            (true, PairMsg::Finish { mac: c, ca_pem, nodes }) => {
                if !same(&c, &mac(&self.key, "client-finish", &self.t, &ca_pem, &nodes)) {
                    return Step::Fail(None, "the client's CA and nodes do not verify".into());
                }
                if same_ca(&ca_pem, own_ca) {
                    return Step::Fail(Some(PairMsg::Refused { reason: SAME_ENVIRONMENT.into() }), "the asking node is of this same environment".into());
                }
                Step::Paired(Remote { ca_pem, nodes })
            }
            (_, PairMsg::Refused { reason }) => Step::Fail(None, format!("the other side gave up: {reason}")),
            (_, other) => Step::Fail(None, format!("unexpected pairing message {}", name(&other))),
        }
    }
}

/// A salted tag of the password kept with the pairing, to notice a changed password.
pub fn password_tag(password: &str, salt: &str) -> String {
    let k = blake3::derive_key("filesync link password tag v1", salt.as_bytes());
    blake3::keyed_hash(&k, password.as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA_A: &str = "-----CA of A-----";
    const CA_B: &str = "-----CA of B-----";

    fn nodes(n: &str) -> Vec<String> {
        vec![format!("{n}:7756")]
    }

    /// Runs the protocol between a client and a server with their own passwords and TLS
    /// exporters; returns the server's last step and what the client got.
    fn run(pw_c: &str, pw_s: &str, exp_c: [u8; 32], exp_s: [u8; 32]) -> (Vec<PairMsg>, Step, Result<Remote, PairError>) {
        let mut sent_by_server = Vec::new();
        let (mut c, hello) = Client::start(pw_c, &exp_c, CA_A, nodes("10.0.0.1"));
        let (mut s, reply) = Server::on_hello(pw_s, &exp_s, hello).unwrap();
        sent_by_server.push(reply);
        let confirm = match c.on_reply(sent_by_server.last().map(clone).unwrap()) {
            Ok(m) => m,
            Err(e) => return (sent_by_server, Step::Fail(None, String::new()), Err(e)),
        };
        let step = s.on_message(confirm, CA_B, &nodes("10.0.1.1"));
        let answer = match &step {
            Step::Proven(m) => clone(m),
            Step::Fail(Some(m), _) => clone(m),
            _ => return (sent_by_server, step, Err(PairError::Unreachable("closed".into()))),
        };
        sent_by_server.push(clone(&answer));
        let finish = match c.on_accept(answer) {
            Ok(m) => m,
            Err(e) => return (sent_by_server, step, Err(e)),
        };
        let last = s.on_message(finish, CA_B, &nodes("10.0.1.1"));
        let got = match &last {
            Step::Paired(_) => c.on_done(PairMsg::Done),
            _ => Err(PairError::Unreachable("closed".into())),
        };
        (sent_by_server, last, got)
    }

    fn clone(m: &PairMsg) -> PairMsg {
        serde_json::from_slice(&serde_json::to_vec(m).unwrap()).unwrap()
    }

    #[test]
    fn same_password_pairs_and_each_side_learns_the_other() {
        let (_, last, got) = run("pw", "pw", [1; 32], [1; 32]);
        assert_eq!(last, Step::Paired(Remote { ca_pem: CA_A.into(), nodes: nodes("10.0.0.1") }));
        assert_eq!(got.unwrap(), Remote { ca_pem: CA_B.into(), nodes: nodes("10.0.1.1") });
    }

    #[test]
    fn a_wrong_password_learns_nothing_and_sees_no_ca() {
        let (sent, last, got) = run("guess", "pw", [1; 32], [1; 32]);
        assert_eq!(got, Err(PairError::Mismatch));
        assert!(matches!(last, Step::Fail(Some(PairMsg::WrongPassword), _)), "{last:?}");
        // Nothing the server sent carries its CA or its nodes.
        let wire = sent.iter().map(|m| serde_json::to_string(m).unwrap()).collect::<Vec<_>>().join("\n");
        assert!(!wire.contains("CA of B") && !wire.contains("10.0.1.1"), "{wire}");
    }

    #[test]
    fn a_relay_between_two_tls_sessions_does_not_confirm() {
        let (_, last, got) = run("pw", "pw", [1; 32], [2; 32]);
        assert!(matches!(last, Step::Fail(Some(PairMsg::WrongPassword), _)), "{last:?}");
        assert_eq!(got, Err(PairError::Mismatch));
    }

    #[test]
    fn the_client_proves_first_and_the_server_reply_proves_nothing() {
        // Whatever the password, the first reply has the same shape and no confirmation a
        // guesser could check offline.
        let (_, hello) = Client::start("guess", &[1; 32], CA_A, vec![]);
        let (_, reply) = Server::on_hello("pw", &[1; 32], hello).unwrap();
        assert!(matches!(reply, PairMsg::Reply { .. }));
        // A node of the same environment (same CA) is told so after proving the password.
        let (mut c, hello) = Client::start("pw", &[1; 32], CA_B, vec![]);
        let (mut s, reply) = Server::on_hello("pw", &[1; 32], hello).unwrap();
        let confirm = c.on_reply(reply).unwrap();
        let Step::Proven(accept) = s.on_message(confirm, CA_B, &[]) else { panic!() };
        assert_eq!(c.on_accept(accept), Err(PairError::Refused(SAME_ENVIRONMENT.into())));
    }

    #[test]
    fn other_versions_and_messages_are_refused() {
        let r = Server::on_hello("pw", &[0; 32], PairMsg::Hello { version: 1, spake: vec![] });
        assert!(matches!(r, Err(Step::Fail(Some(PairMsg::Refused { .. }), _))));
        let (_, hello) = Client::start("pw", &[0; 32], CA_A, vec![]);
        let (mut s, _) = Server::on_hello("pw", &[0; 32], hello).unwrap();
        // A finish before the proof is not accepted.
        let step = s.on_message(PairMsg::Finish { mac: [0; 32], ca_pem: CA_A.into(), nodes: vec![] }, CA_B, &[]);
        assert!(matches!(step, Step::Fail(None, _)));
    }

    #[test]
    fn password_tag_is_salted_and_notices_a_change() {
        assert_eq!(password_tag("pw", "s1"), password_tag("pw", "s1"));
        assert_ne!(password_tag("pw", "s1"), password_tag("pw2", "s1"));
        assert_ne!(password_tag("pw", "s1"), password_tag("pw", "s2"));
        assert!(!password_tag("pw", "s1").contains("pw"));
    }
}
