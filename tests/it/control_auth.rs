//! Access control of the control plane: nothing without a login or API token, CSRF on
//! every form, per-field validation of the install dialog, escaped node data.

use std::collections::HashMap;

use serde_json::json;

use crate::support::control::{ADMIN_PASSWORD, ControlPlane};

/// Logs in through the form; returns the session cookie and the CSRF token of the list page.
async fn login(cp: &ControlPlane) -> (String, String) {
    let r = cp.http.get(format!("{}/login", cp.url)).send().await.unwrap();
    let login_cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    let html = r.text().await.unwrap();
    let csrf = field(&html, "csrf");
    let r = cp
        .http
        .post(format!("{}/login", cp.url))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded").body(form(&[("csrf", csrf.as_str()), ("username", "admin"), ("password", ADMIN_PASSWORD)]))
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
        assert_eq!(r.headers()["location"], "/login");
    }
    for p in ["/api/v1/environments", "/api/v1/ssh-key"] {
        let r = cp.http.get(format!("{}{p}", cp.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{p}");
        let r = cp.http.get(format!("{}{p}", cp.url)).bearer_auth("forged").send().await.unwrap();
        assert_eq!(r.status(), 401, "{p}");
    }
    let r = cp.http.post(format!("{}/api/v1/tokens", cp.url)).json(&json!({"username": "admin", "password": "wrong"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = cp.http.post(format!("{}/login", cp.url)).header("content-type", "application/x-www-form-urlencoded").body(form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])).send().await.unwrap();
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
