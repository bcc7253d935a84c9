//! Invalid agent configs are refused with a message that names the key and the fix.

use std::process::Command;

#[track_caller]
fn check(cfg: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root")).unwrap();
    let p = dir.path().join("agent.toml");
    std::fs::write(&p, cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_filesync")).args(["agent", "--config"]).arg(&p).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
}

const BASE: &str = "node_name = \"n1\"\nlisten = \"127.0.0.1:0\"\nroot = \"root\"\n[tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";

#[test]
fn invalid_configs_name_the_key_and_the_fix() {
    check(&BASE.replace("node_name", "nodename"), "unknown field `nodename`");
    check(&BASE.replace("root = \"root\"", "root = \"missing\""), "root = ");
    check(&BASE.replace("[tls]", "delay = 100000\n[tls]"), "delay = 100000: must be a whole number of seconds");
    check(&BASE.replace("[tls]", "delay = -1\n[tls]"), "delay");
    check(&BASE.replace("[tls]", "excludes = [\"a[\"]\n[tls]"), "excludes: pattern");
    check(BASE, "tls.ca = ");
    check(&BASE.replace("\"n1\"", "\"bad name!\""), "node_name");
}

#[test]
fn example_config_is_valid_toml_with_every_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_filesync")).args(["agent", "--print-example-config"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    for key in ["node_name", "listen", "root", "delay", "excludes", "receive_only", "tls", "peers"] {
        assert!(v.get(key).is_some(), "example lacks {key}");
    }
}
