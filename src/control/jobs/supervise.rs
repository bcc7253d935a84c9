//! How the agent is kept running on a node, and stopped. A node that runs systemd gets
//! one unit per install prefix (`filesync-agent-<systemd-escaped prefix>.service`,
//! enabled, `Restart=always`); its `ExecStart=` arguments are written with systemd's own
//! quoting (double quotes, C escapes, `%%` for specifiers, `$$` for variables), so no
//! prefix can add an argument or a command. Nodes without systemd (PaaS containers, the
//! sandbox) get a detached watchdog shell loop (`run-agent.sh`); a `stopped` file ends it.
//! Every path given to a shell is single-quoted by [`q`].

/// Single-quotes `s` for `sh`.
pub fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// True (exit 0) when the node runs systemd as its init.
pub const HAS_SYSTEMD: &str = "test -d /run/systemd/system && command -v systemctl >/dev/null";

/// The unit of earlier versions (one for every prefix), removed when found for this prefix.
const LEGACY_UNIT: &str = "filesync-agent.service";

/// `systemd-escape --path`: `/opt/file-sync` → `opt-file\x2dsync`.
pub fn systemd_escape_path(path: &str) -> String {
    let trimmed: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let joined = trimmed.join("/");
    if joined.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, b) in joined.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

pub fn unit_name(prefix: &str) -> String {
    format!("filesync-agent-{}.service", systemd_escape_path(prefix))
}

pub fn unit_path(prefix: &str) -> String {
    format!("/etc/systemd/system/{}", unit_name(prefix))
}

/// One `ExecStart=` argument in systemd's syntax: double-quoted with C-style escapes,
/// `%` and `$` doubled so neither specifiers nor variables are expanded.
pub fn exec_arg(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32 & 0xff)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn unit_text(prefix: &str) -> String {
    let exec = [format!("{prefix}/bin/filesync"), "agent".into(), "--config".into(), format!("{prefix}/agent.toml")].iter().map(|a| exec_arg(a)).collect::<Vec<_>>().join(" ");
    format!(
        "# Written by the filesync control plane; edits are replaced on the next install.\n[Unit]\nDescription=filesync agent (File Synchronization add-on)\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nExecStart={exec}\nExecReload=/bin/kill -HUP $MAINPID\nRestart=always\nRestartSec=1\nTimeoutStopSec=15\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// Disables and removes the unit of earlier versions if it runs this prefix's agent.
pub fn remove_legacy_unit(prefix: &str) -> String {
    let legacy = format!("/etc/systemd/system/{LEGACY_UNIT}");
    format!(
        "if grep -qF -- {} {l} 2>/dev/null; then systemctl disable --now {LEGACY_UNIT} 2>/dev/null; rm -f {l}; systemctl daemon-reload 2>/dev/null; fi; true",
        q(&format!("ExecStart={prefix}/bin/filesync ")),
        l = q(&legacy)
    )
}

pub fn watchdog_script(prefix: &str) -> String {
    format!(
        "#!/bin/sh\n# filesync watchdog (no systemd on this node): restarts the agent when it exits.\n# Stop: touch {p}/stopped, then kill the pids in watchdog.pid and agent.pid.\nP={p}\necho $$ > \"$P/watchdog.pid\"\nwhile [ ! -e \"$P/stopped\" ]; do\n  \"$P/bin/filesync\" agent --config \"$P/agent.toml\" >>\"$P/agent.err\" 2>&1 &\n  echo $! > \"$P/agent.pid\"\n  wait $!\n  [ -e \"$P/stopped\" ] && break\n  sleep 1\ndone\n",
        p = q(prefix)
    )
}

/// Stops the agent whichever way it runs: the systemd unit (disabled and removed, the
/// legacy one too) and/or the watchdog loop.
pub fn stop_script(prefix: &str) -> String {
    let (unit, path) = (unit_name(prefix), unit_path(prefix));
    format!(
        "if [ -f {path} ] && command -v systemctl >/dev/null; then systemctl disable --now {unit} 2>/dev/null; rm -f {path}; systemctl daemon-reload 2>/dev/null; fi; {legacy}; P={p}; touch \"$P/stopped\" 2>/dev/null; for f in watchdog.pid agent.pid; do pid=$(cat \"$P/$f\" 2>/dev/null) && kill -TERM \"$pid\" 2>/dev/null; done; for i in $(seq 50); do pid=$(cat \"$P/agent.pid\" 2>/dev/null) && kill -0 \"$pid\" 2>/dev/null || exit 0; sleep 0.1; done; kill -KILL \"$(cat \"$P/agent.pid\")\" 2>/dev/null; exit 0",
        path = q(&path),
        unit = q(&unit),
        legacy = remove_legacy_unit(prefix),
        p = q(prefix)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_follow_systemd_escape() {
        // Values checked against `systemd-escape --path`.
        assert_eq!(systemd_escape_path("/opt/filesync"), "opt-filesync");
        assert_eq!(systemd_escape_path("/opt/file-sync/"), "opt-file\\x2dsync");
        assert_eq!(systemd_escape_path("//srv/.hidden/a b"), "srv-.hidden-a\\x20b");
        assert_eq!(systemd_escape_path("/.x"), "\\x2ex");
        assert_eq!(systemd_escape_path("/"), "-");
        assert_ne!(unit_name("/opt/a"), unit_name("/opt/b"));
    }

    #[test]
    fn exec_start_cannot_be_split_or_expanded() {
        let hostile = "/x/sh -c \"touch /tmp/pwned\" /x/y %h $HOME \\ \n";
        let unit = unit_text(hostile);
        let line = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert_eq!(unit.lines().filter(|l| l.starts_with("ExecStart=")).count(), 1, "{unit}");
        // Exactly four quoted arguments; the hostile text stays inside the first.
        assert!(line.starts_with("ExecStart=\"/x/sh -c \\\"touch /tmp/pwned\\\" /x/y %%h $$HOME \\\\ \\x0a/bin/filesync\" \"agent\" \"--config\" "), "{line}");
        assert_eq!(exec_arg("/opt/filesync/bin/filesync"), "\"/opt/filesync/bin/filesync\"");
    }

    #[test]
    fn shell_quoting_keeps_one_word() {
        assert_eq!(q("a'b"), "'a'\\''b'");
        assert!(stop_script("/opt/it's").contains("P='/opt/it'\\''s'"));
    }
}
