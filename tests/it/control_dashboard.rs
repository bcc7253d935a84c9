//! The dashboard tells the truth, live (issue 14), in headless Chromium against real
//! agents on sshd nodes: nodes diverged while paused are out of sync by name; a node's row
//! follows its agent dying and coming back without a reload; a file written on node 2 is
//! in the recent changes with node 2; a conflict made on several nodes is in the conflict
//! center and "restore the copy" makes every node hold it; verify lists a file changed
//! behind a stopped agent's back and repair fixes it; the log view keeps following new
//! lines; a node whose job failed keeps a fresh heartbeat. Screenshots of each page at
//! 1400 and 800 px (no sideways scrolling at either width).

use std::path::Path;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::{Value, json};

use crate::control_browser::{PAGE, expect_str, log_in};
use crate::support::browser::Browser;
use crate::support::control::{ADMIN_PASSWORD, ControlPlane, describe, until};

/// A control plane polling every second, `n` installed nodes (delay 1 s).
pub(crate) async fn installed(name: &str, n: u32) -> (ControlPlane, Vec<filesync::sandbox::SshNode>, String) {
    let cp = ControlPlane::start_with(None, &[("FILESYNC_HEARTBEAT_SECONDS", "1")]).await;
    let nodes = cp.nodes(n);
    let env = cp.environment(name, &nodes).await;
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "1"})).await;
    assert_eq!(s, 202, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    (cp, nodes, env)
}

/// Opens `path` in the browser, logging in on the way (the login returns to the page).
pub(crate) async fn open_logged_in(b: &Browser, cp: &ControlPlane, path: &str) {
    b.client.goto(&format!("{}{path}", cp.url)).await.unwrap();
    b.wait_js("the login form", PAGE, "return location.pathname", |v| expect_str(v, "/login")).await;
    log_in(b, ADMIN_PASSWORD).await;
    let want = path.split(['?', '#']).next().unwrap().to_owned();
    b.wait_js("the page asked for, after logging in", PAGE, "return location.pathname", |v| expect_str(v, &want)).await;
}

/// Clicks `css` and confirms in the dashboard's confirmation dialog.
pub(crate) async fn click_confirmed(b: &Browser, css: &str) {
    b.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).click().await.unwrap();
    b.wait_js("the confirmation dialog", PAGE, "return document.querySelector('#confirm-dialog').open", |v| if *v == json!(true) { Ok(()) } else { Err("not open".into()) }).await;
    b.client.find(Locator::Css("#confirm-yes")).await.unwrap().click().await.unwrap();
}

/// The environment page's live state: the badge, the headline, and each row's sync state.
const LIVE_JS: &str = r#"
const rows = [...document.querySelectorAll('#node-table tr[data-node]')];
return {
  state: (document.querySelector('#env-state') || {}).textContent,
  headline: (document.querySelector('#env-headline') || {}).textContent,
  rows: Object.fromEntries(rows.map(r => [r.dataset.node, {sync: r.dataset.sync, label: r.querySelector('.node-sync').textContent}])),
  same: window['not-reloaded'] === true,
};
"#;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn signal(pidfile: &Path, sig: &str) {
    let pid = std::fs::read_to_string(pidfile).unwrap();
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.trim()).status().unwrap().success();
    assert!(ok, "kill -{sig} {}", pid.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_dashboard_status_changes_conflicts_and_a_dying_agent_live() {
    let t0 = Instant::now();
    let (cp, nodes, env) = installed("shop", 3).await;
    let b = Browser::start().await;
    eprintln!("3 nodes installed and Chromium ready after {:?}", t0.elapsed());
    b.run("control_dashboard_status", async {
        let c = &b.client;
        let page = format!("/environments/{env}");
        open_logged_in(&b, &cp, &page).await;
        b.js("window['not-reloaded'] = true; return null").await.unwrap();
        b.wait_js("up to date", Duration::from_secs(60), LIVE_JS, |v| if v["state"] == "up to date" { Ok(()) } else { Err("not yet".into()) }).await;

        // The install dialog is a modal; a refused submission comes back with the dialog
        // open, an error summary on top and what was typed; reloading that page is no 405.
        c.find(Locator::Css("#open-install")).await.unwrap().click().await.unwrap();
        crate::control_browser::set_field(&b, "#field-path", "../etc").await;
        c.find(Locator::Css("#install")).await.unwrap().click().await.unwrap();
        let v = b
            .wait_js("the refused dialog", PAGE, "const d = document.querySelector('#install-dialog'); const s = document.querySelector('#error-summary'); return {open: d.open, modal: d.matches(':modal'), summary: s && s.textContent, path: document.querySelector('#field-path').value}", |v| if v["summary"].is_string() { Ok(v.clone()) } else { Err("no summary".into()) })
            .await;
        assert_eq!((&v["open"], &v["modal"], &v["path"]), (&json!(true), &json!(true), &json!("../etc")), "{v:#}");
        assert!(v["summary"].as_str().unwrap().contains("must stay inside the webroot"), "{v:#}");
        b.page_screenshots("install-dialog").await;
        // Opening that address again (GET /environments/{id}/install) leads back to the page.
        let url = c.current_url().await.unwrap();
        assert!(url.path().ends_with("/install"), "{url}");
        c.goto(url.as_str()).await.unwrap();
        b.wait_js("the page again after opening the form's address", PAGE, "return location.pathname + ' ' + document.title", |v| {
            let s = v.as_str().unwrap_or("");
            // (the title, not the address: an environment's UUID may hold "405")
            if s.strip_prefix(&format!("{page} ")).is_some_and(|title| !title.contains("405")) { Ok(()) } else { Err(s.to_owned()) }
        })
        .await;
        c.goto(&cp.url).await.unwrap();
        b.wait_js("the environment list with its state", PAGE, "const e = document.querySelector('li[data-env=shop] .badge'); return e && e.textContent", |v| expect_str(v, "up to date")).await;
        b.page_screenshots("environments").await;
        c.goto(&format!("{}{page}", cp.url)).await.unwrap();

        // A file written on node 2 is in the recent changes, made on node 2.
        std::fs::write(nodes[1].webroot().join("ROOT/from-node2.txt"), b"written on node 2").unwrap();
        c.goto(&format!("{}/environments/{env}/changes", cp.url)).await.unwrap();
        let row = b
            .reload_until("from-node2.txt in the recent changes", Duration::from_secs(60), "const r = document.querySelector('tr[data-path=\"from-node2.txt\"]'); return r && {kind: r.dataset.kind, origin: r.querySelector('.origin').textContent}", |v| {
                if v.is_null() { Err("not listed".into()) } else { Ok(v.clone()) }
            })
            .await;
        assert_eq!(row, json!({"kind": "created", "origin": "node2"}));
        // Node 1's own list says it came from node 2. (Its report may come a heartbeat
        // after node 2's: node 1 can be polled in the round before it applied the file.)
        let via = cp.get(&format!("/api/v1/environments/{env}")).await;
        let node1 = via["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "node1").unwrap()["node_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = cp.get(&format!("/api/v1/nodes/{node1}/changes")).await;
            if let Some(mine) = list["changes"].as_array().unwrap().iter().find(|c| c["path"] == "from-node2.txt").cloned() {
                assert_eq!((&mine["origin"], &mine["via"]), (&json!("node2"), &json!("node2")), "{list:#}");
                break;
            }
            assert!(Instant::now() < deadline, "node1 did not record the change it received: {list:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Node 2's own list has it as made there.
        let node2 = via["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "node2").unwrap()["node_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = cp.get(&format!("/api/v1/nodes/{node2}/changes")).await;
            let own = list["changes"].as_array().unwrap().iter().find(|c| c["path"] == "from-node2.txt").cloned();
            if let Some(own) = own {
                assert_eq!((&own["origin"], &own["via"], &own["kind"]), (&json!("node2"), &Value::Null, &json!("created")), "{list:#}");
                break;
            }
            assert!(Instant::now() < deadline, "node2 did not record its own change: {list:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Paused, the three nodes get three different hello.txt and node 3 an extra file:
        // nothing is exchanged, every index digest is the same, and the page says out of
        // sync, naming the nodes, without a reload.
        c.goto(&format!("{}{page}", cp.url)).await.unwrap();
        b.js("window['not-reloaded'] = true; return null").await.unwrap();
        click_confirmed(&b, "#pause").await;
        b.wait_js("paused", PAGE, LIVE_JS, |v| if v["state"] == "paused" { Ok(()) } else { Err("not yet".into()) }).await;
        b.js("window['not-reloaded'] = true; return null").await.unwrap();
        for (i, n) in nodes.iter().enumerate() {
            std::fs::write(n.webroot().join("ROOT/hello.txt"), format!("hello from node{}", i + 1)).unwrap();
        }
        std::fs::write(nodes[2].webroot().join("ROOT/extra.txt"), b"only on node 3").unwrap();
        let v = b
            .wait_js("out of sync, by name", Duration::from_secs(30), LIVE_JS, |v| {
                assert_eq!(v["same"], true, "the page was reloaded");
                let h = v["headline"].as_str().unwrap_or("");
                if v["state"] == "out of sync" && ["node1", "node2", "node3"].iter().all(|n| h.contains(n)) { Ok(v.clone()) } else { Err("not yet".into()) }
            })
            .await;
        let h = v["headline"].as_str().unwrap();
        assert!(h.starts_with("Out of sync") && h.contains("sync paused") && h.contains("by admin"), "{h}");
        assert!(v["rows"]["node3"]["label"].as_str().unwrap().contains("differs from"), "{v:#}");
        assert!(!h.contains("agree"), "{h}");
        b.page_screenshots("environment-out-of-sync").await;

        // Resumed: the three versions meet; one wins and the others are kept as conflict
        // copies on every node. The conflict center lists them.
        click_confirmed_or_click(&b, "#resume").await;
        c.goto(&format!("{}/environments/{env}/conflicts", cp.url)).await.unwrap();
        let copies = b
            .reload_until("two conflict copies of hello.txt", Duration::from_secs(60), "return [...document.querySelectorAll('#conflict-table tr[data-copy]')].map(r => ({copy: r.dataset.copy, original: r.querySelector('.original').textContent, loser: r.querySelector('.loser').textContent, nodes: r.querySelector('[data-label=\"On nodes\"]').textContent}))", |v| {
                let a = v.as_array().ok_or("no table")?;
                if a.len() == 2 && a.iter().all(|c| c["nodes"] == "node1, node2, node3") { Ok(a.clone()) } else { Err(format!("{} copies", a.len())) }
            })
            .await;
        assert!(copies.iter().all(|c| c["original"] == "hello.txt" && c["copy"].as_str().unwrap().starts_with("hello.sync-conflict-")), "{copies:?}");
        b.page_screenshots("conflicts").await;
        // The event comes from the heartbeat that reads the agents' conflict lists (the page
        // above asked the agents itself): it follows within a few heartbeats.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = cp.get(&format!("/api/v1/environments/{env}")).await["events"].to_string();
            if events.contains("conflict on hello.txt") {
                break;
            }
            assert!(Instant::now() < deadline, "no conflict event: {events}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        // "Restore the copy" on the first one: every node then holds that content as
        // hello.txt, and the copy is gone everywhere.
        let chosen = copies[0]["copy"].as_str().unwrap().to_owned();
        let content = read(&nodes[0].webroot().join("ROOT").join(&chosen));
        assert!(content.starts_with("hello from node"), "{content:?}");
        click_confirmed(&b, &format!("tr[data-copy='{chosen}'] button.restore-copy")).await;
        b.wait_js("the action done", PAGE, "return (document.querySelector('.result') || {}).textContent || null", |v| v.as_str().map(str::to_owned).ok_or_else(|| "no result".into())).await;
        for n in &nodes {
            let (file, copy) = (n.webroot().join("ROOT/hello.txt"), n.webroot().join("ROOT").join(&chosen));
            until(&format!("{} holds the restored copy", n.spec.name), Duration::from_secs(30), || {
                if read(&file) == content && !copy.exists() { Ok(()) } else { Err(format!("hello.txt = {:?}, copy exists: {}", read(&file), copy.exists())) }
            })
            .await;
        }

        // A copy whose name holds a newline (browsers send form values with CRLF): its
        // action still reaches exactly that file.
        let odd = "odd\nname.sync-conflict-20260101-000000-node1-deadbeef.txt";
        std::fs::write(nodes[1].webroot().join("ROOT").join(odd), b"odd").unwrap();
        for n in &nodes {
            let p = n.webroot().join("ROOT").join(odd);
            until(&format!("{} holds the odd copy", n.spec.name), Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err("not yet".into()) }).await;
        }
        c.goto(&format!("{}/environments/{env}/conflicts", cp.url)).await.unwrap();
        b.reload_until("the odd copy listed", Duration::from_secs(60), "const r = [...document.querySelectorAll('#conflict-table tr[data-copy]')].find(r => r.dataset.copy.includes('\\n')); if (!r) return null; r.id = 'odd-row'; return r.dataset.copy", |v| {
            if v.as_str() == Some(odd) { Ok(()) } else { Err(format!("{v}")) }
        })
        .await;
        click_confirmed(&b, "#odd-row button.keep-winner").await;
        b.wait_js("the action done", PAGE, "return (document.querySelector('.result') || {}).textContent || null", |v| v.as_str().map(str::to_owned).ok_or_else(|| "no result".into())).await;
        for n in &nodes {
            let p = n.webroot().join("ROOT").join(odd);
            until(&format!("the odd copy gone on {}", n.spec.name), Duration::from_secs(30), || if p.exists() { Err("still there".into()) } else { Ok(()) }).await;
        }

        c.goto(&format!("{}/environments/{env}/changes", cp.url)).await.unwrap();
        b.page_screenshots("changes").await;

        // The page follows an agent that stops answering and comes back, without a reload.
        c.goto(&format!("{}{page}", cp.url)).await.unwrap();
        b.js("window['not-reloaded'] = true; return null").await.unwrap();
        b.wait_js("up to date again", Duration::from_secs(60), LIVE_JS, |v| if v["state"] == "up to date" { Ok(()) } else { Err("not yet".into()) }).await;
        b.page_screenshots("environment").await;
        let pid = nodes[2].install_prefix().join("agent.pid");
        signal(&pid, "STOP");
        let v = b
            .wait_js("node3's row turns unreachable", Duration::from_secs(30), LIVE_JS, |v| {
                assert_eq!(v["same"], true, "the page was reloaded");
                if v["rows"]["node3"]["sync"] == "unreachable" { Ok(v.clone()) } else { Err("not yet".into()) }
            })
            .await;
        assert_eq!(v["state"], "degraded", "{v:#}");
        assert!(v["headline"].as_str().unwrap().contains("node3 unreachable"), "{v:#}");
        b.page_screenshots("environment-degraded").await;
        signal(&pid, "CONT");
        b.wait_js("node3's row back to up to date", Duration::from_secs(30), LIVE_JS, |v| {
            assert_eq!(v["same"], true, "the page was reloaded");
            if v["rows"]["node3"]["sync"] == "up-to-date" { Ok(()) } else { Err("not yet".into()) }
        })
        .await;
        eprintln!("status, changes, conflicts and a dying agent, in the browser: {:?}", t0.elapsed());
    })
    .await;
    b.close().await;
}

/// Clicks `css`, confirming if the page asks.
async fn click_confirmed_or_click(b: &Browser, css: &str) {
    b.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).click().await.unwrap();
    let asked = b.js("return document.querySelector('#confirm-dialog').open").await.unwrap_or_default();
    if asked == json!(true) {
        b.client.find(Locator::Css("#confirm-yes")).await.unwrap().click().await.unwrap();
    }
}

/// What the verify section shows: each run's kind, state, summary and listed paths.
const CHECKS_JS: &str = r#"
return [...document.querySelectorAll('#checks .check')].map(c => ({
  kind: c.dataset.kind, state: c.dataset.state, summary: c.querySelector('.check-summary').textContent,
  paths: [...c.querySelectorAll('tr[data-path]')].map(r => r.dataset.path),
  not_indexed: [...c.querySelectorAll('.not-indexed')].map(e => e.textContent),
}));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_dashboard_verify_repair_log_follow_and_a_failed_job_keeps_its_heartbeat() {
    let t0 = Instant::now();
    let (cp, mut nodes, env) = installed("verify", 2).await;
    let data = |i: usize| nodes[i].webroot().join("ROOT/data.txt");
    std::fs::write(data(0), b"aaaa-original").unwrap();
    until("data.txt on node2", Duration::from_secs(30), || if read(&data(1)) == "aaaa-original" { Ok(()) } else { Err(read(&data(1))) }).await;

    // Behind the agent's back: node2's agent stopped, data.txt rewritten in place with the
    // same size and its mtime put back, the agent started again. Its start-up scan trusts
    // size and mtime, so nothing is announced and every index digest still agrees.
    let mtime = filetime::FileTime::from_last_modification_time(&std::fs::metadata(data(1)).unwrap());
    nodes[1].kill_agent();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(data(1)).unwrap();
        f.write_all(b"bbbb-changed!").unwrap();
    }
    filetime::set_file_mtime(data(1), mtime).unwrap();
    let prefix = nodes[1].install_prefix();
    let started =
        std::process::Command::new("sh").arg("-c").arg(format!("rm -f '{p}/stopped'; setsid nohup sh '{p}/run-agent.sh' >/dev/null 2>&1 </dev/null &", p = prefix.display())).status().unwrap();
    assert!(started.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = cp.get(&format!("/api/v1/environments/{env}")).await;
        if v["sync"]["state"] == "up_to_date" {
            break;
        }
        if Instant::now() >= deadline {
            let status = |i: usize| std::fs::read_to_string(nodes[i].webroot().join("lsyncd/var/log/lsyncd.status")).unwrap_or_default();
            let log = |i: usize| std::fs::read_to_string(nodes[i].webroot().join("lsyncd/var/log/lsyncd.log")).unwrap_or_default();
            panic!(
                "not up to date after the restart: {:#}\n--- node1 status ---\n{}\n--- node2 status ---\n{}\n--- node2 log ---\n{}\n--- node1 log ---\n{}",
                v["sync"],
                status(0),
                status(1),
                log(1),
                log(0)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(read(&data(0)), "aaaa-original", "node1 got the change: it was not behind the agent's back");

    let b = Browser::start().await;
    b.run("control_dashboard_verify", async {
        let c = &b.client;
        let page = format!("/environments/{env}");
        open_logged_in(&b, &cp, &format!("{page}#verify")).await;
        b.js("window['not-reloaded'] = true; return null").await.unwrap();
        // Verify lists data.txt, with what each node holds and that node2's index did not
        // know about its content.
        c.find(Locator::Css("#verify-now")).await.unwrap().click().await.unwrap();
        let checks = b
            .wait_js("verify to list data.txt", Duration::from_secs(60), CHECKS_JS, |v| {
                let first = &v[0];
                if first["kind"] == "verify" && first["state"] == "succeeded" { Ok(v.clone()) } else { Err("not done".into()) }
            })
            .await;
        assert_eq!(checks[0]["paths"], json!(["data.txt"]), "{checks:#}");
        assert!(checks[0]["not_indexed"][0].as_str().unwrap_or("").contains("node2"), "{checks:#}");
        assert!(checks[0]["summary"].as_str().unwrap().starts_with("1 path(s) differ"), "{checks:#}");
        b.client.goto(&format!("{}{page}#verify", cp.url)).await.unwrap();
        b.page_screenshots("environment-verify").await;

        // Repair: node2 re-reads data.txt, announces it as its change, and node1 follows.
        click_confirmed(&b, "#repair").await;
        let checks = b
            .wait_js("the repair to end", Duration::from_secs(240), CHECKS_JS, |v| {
                let first = &v[0];
                match (first["kind"].as_str(), first["state"].as_str()) {
                    (Some("repair"), Some("succeeded")) => Ok(v.clone()),
                    (Some("repair"), Some("failed")) => panic!("repair failed: {v:#}"),
                    _ => Err("not done".into()),
                }
            })
            .await;
        assert!(checks[0]["summary"].as_str().unwrap().starts_with("repaired 1 path(s)"), "{checks:#}");
        assert_eq!((read(&data(0)), read(&data(1))), ("bbbb-changed!".to_owned(), "bbbb-changed!".to_owned()));

        // The API queues a verify and answers its id; it agrees now.
        let (s, v) = cp.post(&format!("/api/v1/environments/{env}/verify"), json!({})).await;
        assert_eq!(s, 202, "{v}");
        let id = v["job"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        let run = loop {
            let r = cp.get(&format!("/api/v1/checks/{id}")).await;
            if r["state"] == "succeeded" || r["state"] == "failed" {
                break r;
            }
            assert!(Instant::now() < deadline, "{r:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!((&run["state"], &run["result"]["agree"]), (&json!("succeeded"), &json!(true)), "{run:#}");

        // The log view follows the newest line while lines arrive, and stops following
        // when the reader scrolls up.
        let node1 = cp.get(&format!("/api/v1/environments/{env}")).await["nodes"][0]["node_id"].as_str().unwrap().to_owned();
        c.goto(&format!("{}/nodes/{node1}/logs", cp.url)).await.unwrap();
        b.js("window['not-reloaded'] = true; return null").await.unwrap();
        let follow_js = "const b = document.querySelector('#lsyncd-log'); const lines = [...b.querySelectorAll('.line')]; return {bottom: b.scrollTop + b.clientHeight >= b.scrollHeight - 4, overflow: b.scrollHeight > b.clientHeight + 20, last: lines.length ? lines[lines.length - 1].textContent : '', note: document.querySelector('#log-following').textContent, same: window['not-reloaded'] === true}";
        let mut i = 0;
        let writer = |i: usize| std::fs::write(nodes[1].webroot().join(format!("ROOT/log-{i}.bin")), vec![i as u8; 200 * 1024]).unwrap();
        // Enough lines to overflow the box, then more while it is watched.
        for _ in 0..12 {
            writer(i);
            i += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for round in 0..3 {
            writer(i);
            let name = format!("log-{i}.bin");
            i += 1;
            b.wait_js(&format!("the log to show {name} at the bottom (round {round})"), Duration::from_secs(30), follow_js, |v| {
                assert_eq!(v["same"], true, "the page was reloaded");
                let last = v["last"].as_str().unwrap_or("");
                if v["overflow"] == true && v["bottom"] == true && last.contains(&name) { Ok(()) } else { Err(format!("last line {last:?}")) }
            })
            .await;
        }
        b.page_screenshots("logs").await;
        b.js("const b = document.querySelector('#lsyncd-log'); b.scrollTop = 0; b.dispatchEvent(new Event('scroll')); return null").await.unwrap();
        writer(i);
        let name = format!("log-{i}.bin");
        b.wait_js("the new line arrives while scrolled up", Duration::from_secs(30), "const b = document.querySelector('#lsyncd-log'); return {top: b.scrollTop, has: b.textContent, note: document.querySelector('#log-following').textContent}", |v| {
            let text = v["has"].as_str().unwrap_or("");
            if text.contains(&name) {
                assert_eq!(v["top"], 0, "the view jumped to the end although the reader had scrolled up");
                assert!(v["note"].as_str().unwrap().starts_with("scrolled up"), "{v}");
                Ok(())
            } else {
                Err("not yet".into())
            }
        })
        .await;
        // Level filter and search act on the lines shown.
        b.js("document.querySelector('.level-filter[value=normal]').click(); return null").await.unwrap();
        let shown = b.js("return [...document.querySelectorAll('#lsyncd-log .line')].filter(l => !l.hidden).map(l => l.textContent).filter(t => t.includes(' Normal: ')).length").await.unwrap();
        assert_eq!(shown, json!(0), "Normal lines shown with Normal unticked");
        b.js("document.querySelector('.level-filter[value=normal]').click(); const s = document.querySelector('#log-search'); s.value = 'log-3.bin'; s.dispatchEvent(new Event('input')); return null").await.unwrap();
        let shown = b.js("return [...document.querySelectorAll('#lsyncd-log .line')].filter(l => !l.hidden).map(l => l.textContent)").await.unwrap();
        assert!(!shown.as_array().unwrap().is_empty() && shown.as_array().unwrap().iter().all(|l| l.as_str().unwrap().contains("log-3.bin")), "{shown}");
        let r = cp.http.get(format!("{}/nodes/{node1}/logs/download", cp.url)).send().await.unwrap();
        assert_eq!(r.status(), 303, "the download needs a login");
    })
    .await;
    b.close().await;

    // A node whose reconfigure failed (its SSH down) still has an agent: it is polled, its
    // heartbeat stays fresh and its sync state is told apart from the job's result.
    nodes[1].stop_sshd();
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "2"})).await;
    assert_eq!(s, 202, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(120)).await;
    let failed = jobs.iter().find(|j| j["node_name"] == "node2").unwrap();
    assert_eq!(failed["state"], "failed", "{}", describe(&jobs));
    let node2 = |v: &Value| v["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "node2").cloned().unwrap();
    let after_failure = time::OffsetDateTime::now_utc();
    let deadline = Instant::now() + Duration::from_secs(30);
    let n = loop {
        let v = cp.get(&format!("/api/v1/environments/{env}")).await;
        let n = node2(&v);
        let hb = n["last_heartbeat_at"].as_str().and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
        if n["agent_state"] == "failed" && hb.is_some_and(|t| t > after_failure + time::Duration::seconds(3)) {
            break n;
        }
        assert!(Instant::now() < deadline, "node2's heartbeat froze after its job failed: {n:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((&n["health"], &n["last_job"]["state"], &n["sync"]["state"]), (&json!("up"), &json!("failed"), &json!("up_to_date")), "{n:#}");
    assert!(n["sync"]["job_note"].as_str().unwrap().starts_with("last reconfigure failed: reachable"), "{n:#}");
    // Retry through the API once SSH is back: the job succeeds.
    nodes[1].restart_sshd().unwrap();
    let id = n["node_id"].as_str().unwrap();
    let (s, v) = cp.post(&format!("/api/v1/nodes/{id}/retry"), json!({})).await;
    assert_eq!(s, 202, "{v}");
    let job = v["job"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = cp.get(&format!("/api/v1/jobs/{job}")).await;
        if j["state"] == "succeeded" {
            break;
        }
        assert!(j["state"] != "failed" && Instant::now() < deadline, "{j:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("verify, repair, log view and a failed job: {:?}", t0.elapsed());
}

/// A logged-in session over plain HTTP: the login form's CSRF cookie and field, then the
/// session cookie. Returns the `Cookie` header value and where the login redirected.
pub(crate) async fn http_login(cp: &ControlPlane, next: &str) -> (String, String) {
    let r = cp.http.get(format!("{}/login?next={}", cp.url, filesync::control::agent_api::url_encode(next))).send().await.unwrap();
    let csrf_cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let html = r.text().await.unwrap();
    let field = |name: &str| html.split(&format!("name=\"{name}\" value=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_owned();
    let form = [("csrf", field("csrf")), ("next", field("next")), ("username", "admin".into()), ("password", ADMIN_PASSWORD.into())];
    let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", filesync::control::agent_api::url_encode(v))).collect();
    let r = cp.http.post(format!("{}/login", cp.url)).header("cookie", &csrf_cookie).header("content-type", "application/x-www-form-urlencoded").body(body.join("&")).send().await.unwrap();
    assert_eq!(r.status(), 303, "login refused");
    let session = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    (session, r.headers()["location"].to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_dashboard_pages_and_api_answer_in_their_own_shape() {
    let cp = ControlPlane::start().await;
    let nodes = cp.nodes(2);
    let env = cp.environment("shapes", &nodes).await;
    let page = format!("/environments/{env}");

    // Not logged in: the login page, which then returns to the page asked for.
    let r = cp.http.get(format!("{}{page}", cp.url)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, format!("/login?next=%2Fenvironments%2F{env}").as_str()));
    let (cookie, landed) = http_login(&cp, &page).await;
    assert_eq!(landed, page, "the login did not return to the page asked for");
    // Somewhere else than this site is never a place to return to.
    let (_, landed) = http_login(&cp, "//evil.example/x").await;
    assert_eq!(landed, "/");
    let get = |path: String| cp.http.get(format!("{}{path}", cp.url)).header("cookie", cookie.clone()).send();

    // Styled error pages: unknown page, malformed id, wrong method; and a form's address
    // opened directly (a reload after a refused submission) goes back to its page.
    for (path, status, words) in [("/no/such/page".to_owned(), 404, "Not found"), ("/environments/not-a-uuid".to_owned(), 400, "must name an id like")] {
        let r = get(path.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("/static/app.css") && body.contains(words) && body.contains("Back to the environments"), "{path}: {body}");
    }
    let r = cp.http.delete(format!("{}{page}", cp.url)).header("cookie", cookie.clone()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.text().await.unwrap().contains("Not available like this"));
    let r = get(format!("{page}/install")).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, page.as_str()));
    // The page is a modal dialog with constraints and linked labels, and asks before
    // destructive actions.
    let html = get(page.clone()).await.unwrap().text().await.unwrap();
    for want in [
        "<dialog id=\"install-dialog\"",
        "<label for=\"field-delay\"",
        "type=\"number\" name=\"delay\" id=\"field-delay\"",
        "min=\"0\" max=\"3600\"",
        "data-confirm=\"Remove node1?",
        "name=\"viewport\"",
    ] {
        assert!(html.contains(want), "the environment page lacks {want:?}");
    }

    // The API: the state in words, per node too, apart from health and the last job.
    let v = cp.get(&page.replace("/environments", "/api/v1/environments")).await;
    assert_eq!((&v["sync"]["state"], &v["sync"]["headline"]), (&json!("not_installed"), &json!("Not installed")), "{v:#}");
    let n = &v["nodes"][0];
    assert_eq!((&n["sync"]["label"], &n["health"], &n["last_job"]), (&json!("not installed"), &json!("unknown"), &Value::Null), "{n:#}");
    // A required field sent empty is refused, not defaulted; nothing is queued.
    let (s, e) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "", "delay": "1"})).await;
    assert_eq!(s, 422, "{e}");
    assert!(e["errors"]["path"].as_str().unwrap().contains("required"), "{e}");
    let id = n["node_id"].as_str().unwrap();
    let (s, e) = cp.post(&format!("/api/v1/nodes/{id}/retry"), json!({})).await;
    assert_eq!((s, e["error"].as_str().unwrap_or("")), (422, "the add-on is not installed on this environment: install it first"));
    let r = cp.http.get(format!("{}/api/v1/nodes/{}/changes", cp.url, uuid::Uuid::new_v4())).bearer_auth(&cp.token).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"error": "node not found"}));
}

/// Figures for the report (ignored: it writes 20,000 files per node). Verify of two nodes
/// holding 20,000 files of 4 KiB in 200 directories; the environment page and its live
/// fragment, each asked 20 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn control_dashboard_measure_verify_and_pages() {
    let cp = ControlPlane::start_with(None, &[("FILESYNC_HEARTBEAT_SECONDS", "2")]).await;
    let nodes = cp.nodes(2);
    let t = Instant::now();
    for n in &nodes {
        for d in 0..200 {
            let dir = n.webroot().join(format!("ROOT/d{d:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..100 {
                let p = dir.join(format!("f{f:03}.bin"));
                std::fs::write(&p, vec![(d * 100 + f) as u8; 4096]).unwrap();
                filetime::set_file_mtime(&p, filetime::FileTime::from_unix_time(1_700_000_000, 0)).unwrap();
            }
        }
    }
    eprintln!("wrote 2 x 20,000 files in {:?}", t.elapsed());
    let env = cp.environment("measure", &nodes).await;
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "1"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(300)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    let deadline = Instant::now() + Duration::from_secs(300);
    while cp.get(&format!("/api/v1/environments/{env}")).await["sync"]["state"] != "up_to_date" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for round in 0..2 {
        let t = Instant::now();
        let (_, v) = cp.post(&format!("/api/v1/environments/{env}/verify"), json!({})).await;
        let id = v["job"].as_str().unwrap().to_owned();
        let run = loop {
            let r = cp.get(&format!("/api/v1/checks/{id}")).await;
            if r["state"] == "succeeded" || r["state"] == "failed" {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("verify round {round}: {:?} end to end; {} ({} ms in the run)", t.elapsed(), run["result"]["summary"], run["result"]["took_ms"]);
        assert_eq!(run["result"]["agree"], true, "{run:#}");
    }
    let (cookie, _) = http_login(&cp, "/").await;
    for path in [format!("/environments/{env}"), format!("/environments/{env}/live"), format!("/environments/{env}/changes")] {
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let r = cp.http.get(format!("{}{path}", cp.url)).header("cookie", cookie.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        eprintln!("{path}: median {:.1} ms, max {:.1} ms", times[10], times[19]);
    }
}
