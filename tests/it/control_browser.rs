//! The dashboard end to end in headless Chromium (fantoccini over chromedriver): log in
//! through the form, open an environment, install from the dialog, watch every node's
//! progress reach success live on the page, see a change replicate between nodes, and read
//! a node's sync lines in its (live) log view.

use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::{Value, json};

use crate::support::browser::Browser;
use crate::support::control::{ADMIN_PASSWORD, ControlPlane, until};

/// Deadline for one page interaction (load, redirect, a DOM change).
pub(crate) const PAGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_browser_login_install_watch_progress_replicate_and_read_logs() {
    let t0 = Instant::now();
    let cp = ControlPlane::start().await;
    let nodes = cp.nodes(3);
    let env = cp.environment("shop", &nodes).await;
    let b = Browser::start().await;
    eprintln!("control plane, 3 sshd nodes and Chromium ready after {:?}", t0.elapsed());

    b.run("control_browser", async {
        let c = &b.client;

        // Not logged in: the dashboard sends the browser to the login form.
        c.goto(&cp.url).await.unwrap();
        b.wait_js("the login form", PAGE, "return location.pathname + ' ' + !!document.querySelector('#login-form')", |v| expect_str(v, "/login true")).await;

        // A wrong password is refused on the form, which keeps the user name.
        log_in(&b, "not the password").await;
        let err = b
            .wait_js("the login error", PAGE, "const e = document.querySelector('#login-error'); return e && e.textContent", |v| v.as_str().map(str::to_owned).ok_or_else(|| "no error shown".into()))
            .await;
        assert_eq!(err, "Wrong user name or password.");
        assert_eq!(c.find(Locator::Css("#username")).await.unwrap().prop("value").await.unwrap().as_deref(), Some("admin"));

        // The right one lands on the environment list.
        log_in(&b, ADMIN_PASSWORD).await;
        b.wait_js("the environment list", PAGE, "return location.pathname + ' ' + [...document.querySelectorAll('a.env-link')].map(a => a.textContent).join(',')", |v| expect_str(v, "/ shop")).await;
        eprintln!("logged in after {:?}", t0.elapsed());

        // The environment page, from its link.
        c.find(Locator::LinkText("shop")).await.unwrap().click().await.unwrap();
        let env_path = format!("/environments/{env}");
        b.wait_js("the environment page", PAGE, "return location.pathname + ' ' + !!document.querySelector('#install-form')", |v| expect_str(v, &format!("{env_path} true"))).await;
        let rows = b.js("return [...document.querySelectorAll('table.nodes tr[data-node]')].map(r => r.dataset.node)").await.unwrap();
        assert_eq!(rows, json!(["node1", "node2", "node3"]), "node rows on the environment page");

        // The dialog is a modal opened from the page; the other-environment fields show only
        // for that mode (showIf).
        c.find(Locator::Css("#open-install")).await.unwrap().click().await.unwrap();
        b.wait_js("the install dialog open", PAGE, "return document.querySelector('#install-dialog').open", |v| if *v == json!(true) { Ok(()) } else { Err("closed".into()) }).await;
        let hidden = "return ['address', 'password'].map(f => document.querySelector(`[data-field=${f}]`).hidden)";
        assert_eq!(b.js(hidden).await.unwrap(), json!([true, true]), "two-environment fields shown in one-environment mode");
        c.find(Locator::Css("input[name=mode][value=two_envs]")).await.unwrap().click().await.unwrap();
        b.wait_js("the two-environment fields to show", PAGE, hidden, |v| if *v == json!([false, false]) { Ok(()) } else { Err("still hidden".into()) }).await;
        assert!(c.find(Locator::Css("#field-address")).await.unwrap().is_displayed().await.unwrap());
        c.find(Locator::Css("input[name=mode][value=one_env]")).await.unwrap().click().await.unwrap();
        b.wait_js("the two-environment fields to hide", PAGE, hidden, |v| if *v == json!([true, true]) { Ok(()) } else { Err("still shown".into()) }).await;

        // Fill it: sync path and a 1 s delay; Install.
        set_field(&b, "#field-path", "ROOT").await;
        set_field(&b, "#field-delay", "1").await;
        let t_install = Instant::now();
        c.find(Locator::Css("#install")).await.unwrap().click().await.unwrap();
        b.wait_js("the redirect to the progress section", PAGE, "return location.pathname + location.hash", |v| expect_str(v, &format!("{env_path}#progress"))).await;

        // Progress, live on this page (it polls the jobs fragment): every node reaches
        // healthy and the summary says so. A failed job ends the wait at once.
        let mut seen: Vec<String> = Vec::new();
        b.wait_js("every node's install to succeed on the page", Duration::from_secs(90), PROGRESS_JS, |v| {
            let summary = v["summary"].as_str().unwrap_or("").to_owned();
            let line = format!("{summary}: {}", v["jobs"].as_array().into_iter().flatten().map(|j| format!("{}={}", j["node"], j["state"])).collect::<Vec<_>>().join(" "));
            if seen.last() != Some(&line) {
                seen.push(line);
            }
            if let Some(j) = v["jobs"].as_array().into_iter().flatten().find(|j| j["state"] == "failed") {
                panic!("install failed on the page: {j:#}");
            }
            let jobs = v["jobs"].as_array().ok_or("no jobs listed")?;
            let names: Vec<&str> = jobs.iter().filter_map(|j| j["node"].as_str()).collect();
            if summary != "succeeded on all 3 nodes" || names != ["node1", "node2", "node3"] {
                return Err(format!("summary {summary:?}, nodes {names:?}"));
            }
            for j in jobs {
                let steps: Vec<&str> = j["steps"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let last = steps.last().copied().unwrap_or("");
                if j["state"] != "succeeded" || !j["class"].as_str().unwrap_or("").contains("job-succeeded") || !(last == "healthy=ok" || last == "healthy=done") {
                    return Err(format!("{} not done: {j}", j["node"]));
                }
                // A step that changed something reads "done".
                assert!(steps.iter().all(|s| s.ends_with("=ok") || s.ends_with("=done")), "a step did not succeed: {j}");
            }
            Ok(())
        })
        .await;
        eprintln!("install on 3 nodes, watched in the browser: {:?}; the page showed: {seen:#?}", t_install.elapsed());
        match b.save_screenshot("control_browser_progress").await {
            Ok(p) => eprintln!("progress screenshot: {}", p.display()),
            Err(e) => eprintln!("no progress screenshot: {e}"),
        }

        // Reloaded, the page shows the installation with what the dialog sent, every agent
        // running and every host key pinned (the state is settled just after the last job).
        b.reload_until("the installed state after a reload", PAGE, INSTALLED_JS, |v| {
            let want = json!({
                "installation": "File Synchronization: installed (path ROOT, delay 1 s)",
                "button": "Apply (reconfigure)",
                "agents": ["running", "running", "running"],
                "pinned": [true, true, true],
            });
            if *v == want { Ok(()) } else { Err(format!("want {want}")) }
        })
        .await;

        // A change on node 1 reaches the others: a small file (sent with the change list)
        // and one over 128 KiB (fetched, which the receiver logs by name).
        let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        std::fs::write(nodes[0].webroot().join("ROOT/hello.txt"), b"hello from the browser test").unwrap();
        std::fs::write(nodes[0].webroot().join("ROOT/big.bin"), &big).unwrap();
        for n in &nodes[1..] {
            for (name, want) in [("hello.txt", &b"hello from the browser test"[..]), ("big.bin", &big[..])] {
                let p = n.webroot().join("ROOT").join(name);
                until(&format!("{name} on {}", n.spec.name), Duration::from_secs(30), || match std::fs::read(&p) {
                    Ok(d) if d == want => Ok(()),
                    Ok(d) => Err(format!("{} bytes, not the {} written", d.len(), want.len())),
                    Err(e) => Err(e.to_string()),
                })
                .await;
            }
        }

        // Node 2's log view, from its row's Logs link: the agent's sync lines are on the page.
        c.find(Locator::Css("tr[data-node=node2] a.logs-link")).await.unwrap().click().await.unwrap();
        b.wait_js("node2's log view", PAGE, "return document.querySelector('h1').textContent", |v| {
            if v.as_str().is_some_and(|h| h.starts_with("Node node2 (")) { Ok(()) } else { Err("not the node2 log page".into()) }
        })
        .await;
        // Changes travel the full mesh: node2 may get them from node1 or relayed by node3.
        // Small files from their author come inline ("applied N of M change(s) from ..."),
        // fetched ones are logged by name ("received big.bin from node1 (204800 bytes ...").
        let log = b
            .wait_js("node2's sync lines in the log view", Duration::from_secs(30), LOG_JS, |v| {
                let log = v["log"].as_str().unwrap_or("");
                let has = |a: &str, b: &str| log.lines().any(|l| l.contains(a) && l.contains(b));
                let checks = [
                    ("startup complete", has("Normal: startup complete: listening on ", ":7755")),
                    ("a peer connected", has("Normal: peer node", ") connected; catching up")),
                    ("big.bin received", has("Normal: received big.bin from node", " (204800 bytes on the wire")),
                    ("hello.txt applied or received", has("Normal: applied ", " change(s) from node") || has("Normal: received hello.txt from node", " (27 bytes")),
                ];
                match checks.iter().find(|(_, ok)| !ok) {
                    Some((what, _)) => Err(format!("no line for {what} yet")),
                    None => Ok(log.to_owned()),
                }
            })
            .await;
        let status = b.js(LOG_JS).await.unwrap();
        assert!(status["status"].as_str().unwrap_or("").contains("Node: node2 (send-receive)"), "lsyncd.status on the page: {status:#}");
        // The agent's status is rendered (a table of facts and one of peers), not raw JSON.
        assert_eq!(status["agent_node"], "node2", "agent status on the page: {status:#}");
        assert!(!status["agent"].as_str().unwrap_or("").contains("\"node_name\""), "raw JSON on the page: {status:#}");
        assert_eq!(status["peers"], json!(["node1", "node3"]), "{status:#}");

        // The log view is live: a new change shows up without reloading the page.
        let marker = "page-was-not-reloaded";
        b.js(&format!("window['{marker}'] = true; return null")).await.unwrap();
        let before = log.lines().filter(|l| l.contains("received ")).count();
        std::fs::write(nodes[0].webroot().join("ROOT/later.bin"), &big[..150 * 1024]).unwrap();
        b.wait_js("the new change in the live log", Duration::from_secs(30), &format!("return {{log: document.querySelector('#lsyncd-log').textContent, same: window['{marker}'] === true}}"), |v| {
            let log = v["log"].as_str().unwrap_or("");
            assert_eq!(v["same"], true, "the page was reloaded");
            if log.contains("Normal: received later.bin from node") && log.lines().filter(|l| l.contains("received ")).count() > before { Ok(()) } else { Err("not there yet".into()) }
        })
        .await;
        eprintln!("whole browser flow: {:?}", t0.elapsed());
    })
    .await;
    b.close().await;
}

/// The jobs on the environment page, as the browser shows them.
const PROGRESS_JS: &str = r#"
const s = document.querySelector('#jobs-summary');
return {
  summary: s ? s.textContent.trim() : null,
  jobs: [...document.querySelectorAll('#jobs .job')].map(j => ({
    node: j.dataset.node,
    class: j.className,
    state: j.querySelector('h3 .state').textContent,
    error: (j.querySelector('.error') || {}).textContent || null,
    steps: [...j.querySelectorAll('.steps li')].map(li => li.querySelector('b').textContent + '=' + li.querySelector('.state').textContent),
  })),
};
"#;

/// The installation line, the dialog's button and the node rows of the environment page.
const INSTALLED_JS: &str = r#"
const rows = [...document.querySelectorAll('table.nodes tr[data-node]')];
const line = document.querySelector('main > p').textContent, i = line.indexOf('File Synchronization');
return {
  installation: line.slice(i, line.indexOf(')', i) + 1),
  button: document.querySelector('#install').textContent,
  agents: rows.map(r => r.querySelector('.agent-state').textContent),
  pinned: rows.map(r => r.querySelector('.host-key').textContent.startsWith('SHA256:')),
};
"#;

/// The three panes of a node's log view.
const LOG_JS: &str = r#"
const t = id => (document.getElementById(id) || {}).textContent || '';
const fact = [...document.querySelectorAll('#agent-status table.facts tr')].find(r => r.querySelector('th').textContent === 'Node');
return {log: t('lsyncd-log'), status: t('lsyncd-status'), agent: t('agent-status'), agent_node: fact ? fact.querySelector('td').textContent : null,
  peers: [...document.querySelectorAll('#agent-status tr[data-peer]')].map(r => r.dataset.peer)};
"#;

pub(crate) fn expect_str(v: &Value, want: &str) -> Result<(), String> {
    if v.as_str() == Some(want) { Ok(()) } else { Err(format!("want {want:?}")) }
}

/// Fills the login form (whatever it holds) and submits it.
pub(crate) async fn log_in(b: &Browser, password: &str) {
    set_field(b, "#username", "admin").await;
    set_field(b, "#password", password).await;
    b.client.find(Locator::Css("#login")).await.unwrap().click().await.unwrap();
}

pub(crate) async fn set_field(b: &Browser, css: &str, value: &str) {
    let e = b.client.wait().at_most(PAGE).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
    assert_eq!(e.prop("value").await.unwrap().as_deref(), Some(value), "{css} after typing");
}

/// The dashboard over HTTPS with its self-signed certificate: the fingerprint `serve`
/// printed is the one served, Chromium trusts exactly that key, the session cookie is
/// `__Host-` and `Secure`, HSTS is sent, and the API tokens page works. Screenshots of the
/// pages this branch changed are saved at 1400 and 800 px.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_browser_over_tls_with_a_self_signed_certificate() {
    use base64::Engine;
    use sha2::Digest;
    let cp = crate::support::control::ControlPlane::start_opts(crate::support::control::Options { args: vec!["--tls".into(), "on".into()], ..Default::default() }).await;
    assert!(cp.url.starts_with("https://127.0.0.1:"), "{}", cp.url);
    let r = cp.http.get(format!("{}/login", cp.url)).send().await.unwrap();
    let der = r.extensions().get::<reqwest::tls::TlsInfo>().and_then(|i| i.peer_certificate()).expect("no peer certificate").to_vec();
    let fp = sha2::Sha256::digest(&der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    assert!(cp.said().contains(&format!("fingerprint {fp}")), "printed: {}; served: {fp}", cp.said());
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-filesync_login_csrf=") && cookie.contains("; Secure") && cookie.contains("Path=/;"), "{cookie}");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let spki = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw));

    // Something to show on the environment page: two installed nodes and a join token.
    let nodes = cp.nodes(2);
    let env = cp.environment("shop", &nodes).await;
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "1"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", crate::support::control::describe(&jobs));
    cp.post(&format!("/api/v1/environments/{env}/join-tokens"), json!({"name": "autoscaler", "valid_hours": 2, "max_uses": 3})).await;
    // A sync path change while node2 cannot be reached over SSH: node2 stays paused.
    let mut nodes = nodes;
    nodes[1].stop_sshd();
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT/shared", "delay": "1"})).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = cp.get(&format!("/api/v1/environments/{env}")).await;
        if v["installation"]["state"] == "failed" && v["nodes"][1]["agent_state"] == "paused" {
            break;
        }
        assert!(Instant::now() < deadline, "node2 was not held paused: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let b = Browser::start_with(&[format!("--ignore-certificate-errors-spki-list={spki}")]).await;
    b.run("control_browser_tls", async {
        let c = &b.client;
        c.goto(&cp.url).await.unwrap();
        b.wait_js("the login form over https", PAGE, "return location.protocol + ' ' + location.pathname", |v| expect_str(v, "https: /login")).await;
        log_in(&b, "not the password").await;
        b.wait_js("the login error", PAGE, "const e = document.querySelector('#login-error'); return e && e.textContent", |v| v.as_str().map(str::to_owned).ok_or_else(|| "no error shown".into()))
            .await;
        b.page_screenshots("login").await;
        log_in(&b, ADMIN_PASSWORD).await;
        b.wait_js("the environment list", PAGE, "return location.pathname + ' ' + [...document.querySelectorAll('a.env-link')].map(a => a.textContent).join(',')", |v| expect_str(v, "/ shop")).await;
        let cookies = c.get_all_cookies().await.unwrap();
        let session = cookies.iter().find(|k| k.name() == "__Host-filesync_session").unwrap_or_else(|| panic!("no __Host- session cookie: {cookies:?}"));
        assert_eq!((session.secure(), session.http_only()), (Some(true), Some(true)), "{session:?}");
        b.page_screenshots("environments-tls").await;

        c.goto(&format!("{}/environments/{env}", cp.url)).await.unwrap();
        b.wait_js("the environment page", PAGE, "return [...document.querySelectorAll('table.nodes .agent-state')].map(e => e.textContent).join(',')", |v| expect_str(v, "running,paused")).await;
        let note = b.js("return document.querySelector('tr[data-node=node2] .state-note').textContent").await.unwrap();
        assert_eq!(note, "on the old sync path until a reconfigure reaches it");
        b.js("document.querySelector('#join-tokens').open = true; return null").await.unwrap();
        b.page_screenshots("environment-held-paused").await;

        // The API tokens page: create one (shown once), then revoke it.
        c.find(Locator::LinkText("API tokens")).await.unwrap().click().await.unwrap();
        b.wait_js("the API tokens page", PAGE, "return location.pathname + ' ' + !!document.querySelector('#new-token-form')", |v| expect_str(v, "/tokens true")).await;
        set_field(&b, "input[name=name]", "deploy script").await;
        c.find(Locator::Css("#create-token")).await.unwrap().click().await.unwrap();
        let token = b
            .wait_js("the new token", PAGE, "const e = document.querySelector('#new-api-token'); return e && e.textContent", |v| v.as_str().map(str::to_owned).ok_or_else(|| "not shown".into()))
            .await;
        assert!(token.starts_with("fsa_"), "{token}");
        b.page_screenshots("tokens").await;
        let r = cp.http.get(format!("{}/api/v1/environments", cp.url)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        c.find(Locator::Css("tr[data-token='deploy script'] button")).await.unwrap().click().await.unwrap();
        b.wait_js("the token revoked", PAGE, "const r = document.querySelector(\"tr[data-token='deploy script'] .token-state\"); return r && r.textContent", |v| expect_str(v, "revoked")).await;
        let r = cp.http.get(format!("{}/api/v1/environments", cp.url)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 401);
    })
    .await;
    b.close().await;
}
