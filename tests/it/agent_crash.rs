//! kill -9 in the middle of a large transfer, on the receiving side and on the sending side:
//! no partial file is ever visible under the real name, and after a restart everything
//! converges.

use std::time::Duration;

use crate::support::cluster::{Cluster, Options, write};
use crate::support::poll::until;

const SIZE: usize = 200 * 1024 * 1024;

fn big_content() -> Vec<u8> {
    // Incompressible-ish and position-dependent, so a partial or shifted copy is detectable.
    let mut v = vec![0u8; SIZE];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v
}

fn kill_mid_transfer(kill_receiver: bool) {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    let data = big_content();
    let expected = blake3::hash(&data).to_hex().to_string();
    write(&c.nodes[0].path("big.bin"), &data);
    drop(data);
    // Wait until the receiver has a temp file growing, i.e. the transfer is under way.
    let recv_root = c.root(1).to_owned();
    until("a transfer in progress on node2", Duration::from_secs(60), || {
        for e in std::fs::read_dir(&recv_root).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".filesync.big.bin") {
                return Ok(());
            }
        }
        Err("no temp file yet".into())
    });
    let victim = if kill_receiver { 1 } else { 0 };
    c.kill9(victim);
    // Under its real name the receiver has nothing or the whole file, never a part.
    if let Ok(m) = std::fs::metadata(c.nodes[1].path("big.bin")) {
        assert_eq!(m.len() as usize, SIZE, "partial file visible after kill -9");
    }
    c.start(victim);
    let t = c.converge("big file after restart", Duration::from_secs(120), |t| match t.get("big.bin") {
        Some(i) if i.size as usize == SIZE => Ok(()),
        other => Err(format!("{other:?}")),
    });
    assert_eq!(t["big.bin"].hash, expected);
}

#[test]
fn kill9_receiver_mid_transfer_leaves_no_partial_file() {
    kill_mid_transfer(true);
}

#[test]
fn kill9_sender_mid_transfer_leaves_no_partial_file() {
    kill_mid_transfer(false);
}
