//! Access control of the control plane: nothing without a login or API token, CSRF on
//! every form, per-field validation of the install dialog, escaped node data.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::control::{ADMIN_PASSWORD, ControlPlane, describe, until};

/// Logs in through the form; returns the session cookie and the CSRF token of the list page.
pub(crate) async fn login(cp: &ControlPlane) -> (String, String) {
    let r = cp.http.get(format!("{}/login", cp.url)).send().await.unwrap();
    let login_cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    let html = r.text().await.unwrap();
    let csrf = field(&html, "csrf");
    let r = cp
        .http
        .post(format!("{}/login", cp.url))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", csrf.as_str()), ("username", "admin"), ("password", ADMIN_PASSWORD)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "login failed");
    let session = r.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    let html = cp.http.get(format!("{}/", cp.url)).header("cookie", &session).send().await.unwrap().text().await.unwrap();
    (session, field(&html, "csrf"))
}

fn form(kv: &[(&str, &str)]) -> String {
    let enc = |s: &str| s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>();
    kv.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

fn field(html: &str, name: &str) -> String {
    let i = html.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no {name} field in {html}"));
    let rest = &html[i + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_auth_nothing_without_login_or_token() {
    let cp = ControlPlane::start().await;
    for p in ["/", "/environments/00000000-0000-0000-0000-000000000000", "/nodes/00000000-0000-0000-0000-000000000000/logs"] {
        let r = cp.http.get(format!("{}{p}", cp.url)).send().await.unwrap();
        assert_eq!(r.status(), 303, "{p}");
        // To the login form, which returns to the page asked for.
        let want = if p == "/" { "/login".to_owned() } else { format!("/login?next={}", p.replace('/', "%2F")) };
        assert_eq!(r.headers()["location"], want.as_str());
    }
    for p in ["/api/v1/environments", "/api/v1/ssh-key"] {
        let r = cp.http.get(format!("{}{p}", cp.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{p}");
        let r = cp.http.get(format!("{}{p}", cp.url)).bearer_auth("forged").send().await.unwrap();
        assert_eq!(r.status(), 401, "{p}");
    }
    let r = cp.http.post(format!("{}/api/v1/tokens", cp.url)).json(&json!({"username": "admin", "password": "wrong"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r =
        cp.http.post(format!("{}/login", cp.url)).header("content-type", "application/x-www-form-urlencoded").body(form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])).send().await.unwrap();
    assert_eq!(r.status(), 403, "login without its CSRF token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_auth_forms_need_csrf_and_bad_fields_are_reported() {
    let cp = ControlPlane::start().await;
    let (session, csrf) = login(&cp).await;
    let post = |path: &str, fields: HashMap<&str, &str>| {
        let req = cp.http.post(format!("{}{path}", cp.url)).header("cookie", &session).header("content-type", "application/x-www-form-urlencoded").body(form(&fields.into_iter().collect::<Vec<_>>()));
        async move { req.send().await.unwrap() }
    };
    let r = post("/environments", [("name", "x")].into()).await;
    assert_eq!(r.status(), 403, "no CSRF token");
    let r = post("/environments", [("name", "x"), ("csrf", "wrong")].into()).await;
    assert_eq!(r.status(), 403, "wrong CSRF token");
    let r = post("/environments", [("name", "<b>bad name</b>"), ("csrf", &csrf)].into()).await;
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(html.contains("use 1-63 letters") && !html.contains("<b>bad name</b>"));
    let r = post("/environments", [("name", "shop"), ("csrf", &csrf)].into()).await;
    assert_eq!(r.status(), 303);
    let env = r.headers()["location"].to_str().unwrap().trim_start_matches("/environments/").to_owned();

    // Per-field errors, next to the field, from the dialog and the API.
    let nodes = cp.nodes(1);
    let (s, v) = cp
        .post(&format!("/api/v1/environments/{env}/nodes"), json!({"name": "n1", "address": nodes[0].spec.ip.to_string(), "ssh_port": 2222, "webroot": nodes[0].webroot().display().to_string()}))
        .await;
    assert_eq!(s, 201, "{v}");
    let r = post(&format!("/environments/{env}/install"), [("csrf", csrf.as_str()), ("mode", "one_env"), ("path", "../../etc"), ("delay", "99999")].into()).await;
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"error-path\">must stay inside the webroot"), "{html}");
    assert!(html.contains("id=\"error-delay\">must be from 0 to 3600"), "{html}");
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"mode": "two_envs", "address": "not an address", "delay": "1.5"})).await;
    assert_eq!(s, 422);
    assert!(v["errors"]["address"].is_string() && v["errors"]["password"].is_string() && v["errors"]["delay"].is_string(), "{v}");
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/nodes"), json!({"name": "n2", "address": "bad host", "ssh_port": 70000})).await;
    assert_eq!(s, 422);
    assert!(v["errors"]["address"].is_string() && v["errors"]["ssh_port"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_auth_file_names_from_nodes_are_escaped_in_the_log_view() {
    let cp = ControlPlane::start().await;
    let nodes = cp.nodes(2);
    let env = cp.environment("xss", &nodes).await;
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    assert_eq!(s, 202, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(120)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));

    // A file whose path is a script element (a directory `<script>alert(1)<` holding
    // `script>.txt`), over 128 KiB so it is fetched: node1 logs it as a local change, node2
    // as "received <path> from node1".
    let path = "<script>alert(1)</script>.txt";
    let dir = nodes[0].webroot().join("ROOT/<script>alert(1)<");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("script>.txt"), vec![b'x'; 200 * 1024]).unwrap();
    let copy = nodes[1].webroot().join("ROOT").join(path);
    until("the file on node2", Duration::from_secs(30), || {
        std::fs::metadata(&copy).map(|m| m.len()).map_err(|e| e.to_string()).and_then(|n| if n == 200 * 1024 { Ok(()) } else { Err(format!("{n} bytes")) })
    })
    .await;

    let (session, _) = login(&cp).await;
    let ids: HashMap<String, String> =
        cp.get(&format!("/api/v1/environments/{env}")).await["nodes"].as_array().unwrap().iter().map(|n| (n["name"].as_str().unwrap().to_owned(), n["node_id"].as_str().unwrap().to_owned())).collect();
    for (node, line) in [("node1", "local change(s): "), ("node2", "Normal: received ")] {
        // The log page and its live fragment (what the page's script puts in innerHTML).
        for page in [format!("/nodes/{}/logs", ids[node]), format!("/nodes/{}/logs/live", ids[node])] {
            let deadline = Instant::now() + Duration::from_secs(30);
            let html = loop {
                let r = cp.http.get(format!("{}{page}", cp.url)).header("cookie", &session).send().await.unwrap();
                assert_eq!(r.status(), 200, "{page}");
                let html = r.text().await.unwrap();
                if unescape(&html).lines().any(|l| l.contains(line) && l.contains(path)) {
                    break html;
                }
                assert!(Instant::now() < deadline, "{node}: no line with {line:?} and {path:?} in {page}:\n{html}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            // The name is there as text (escaped, e.g. `&#60;script&#62;` or `&lt;script&gt;`),
            // never as markup: the only script element is the dashboard's own.
            assert!(!html.contains("<script>alert(1)") && !html.contains("</script>.txt") && !html.contains("alert(1)<"), "{node}: {path} unescaped in {page}:\n{html}");
            assert!(
                html.contains("&#60;script&#62;alert(1)&#60;/script&#62;.txt") || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;.txt"),
                "{node}: {path} not escaped as expected in {page}:\n{html}"
            );
            assert_eq!(html.matches("<script").count(), if page.ends_with("/live") { 0 } else { 1 }, "{page}:\n{html}");
        }
    }
}

/// The text of HTML as a browser shows it, for the entities askama and `escape` produce.
fn unescape(html: &str) -> String {
    [("&#60;", "<"), ("&lt;", "<"), ("&#62;", ">"), ("&gt;", ">"), ("&#34;", "\""), ("&quot;", "\""), ("&#39;", "'"), ("&#38;", "&"), ("&amp;", "&")]
        .iter()
        .fold(html.to_owned(), |s, (e, c)| s.replace(e, c))
}
