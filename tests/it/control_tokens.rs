//! API tokens expire, are listed (never shown again) and can be revoked, over the API and
//! on the dashboard's API tokens page; a revoked or expired token is refused.

use serde_json::{Value, json};

use crate::support::control::{ADMIN_PASSWORD, ControlPlane, postgres};

async fn status_with(cp: &ControlPlane, token: &str) -> u16 {
    cp.http.get(format!("{}/api/v1/environments", cp.url)).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_tokens_expire_are_listed_and_revoked() {
    let cp = ControlPlane::start().await;
    let new_token =
        |name: &str, days: Value| cp.http.post(format!("{}/api/v1/tokens", cp.url)).json(&json!({"username": "admin", "password": ADMIN_PASSWORD, "name": name, "valid_days": days})).send();
    for bad in [json!(0), json!(366), json!(-1)] {
        assert_eq!(new_token("bad", bad.clone()).await.unwrap().status(), 422, "valid_days {bad}");
    }
    let r: Value = new_token("ci", json!(1)).await.unwrap().json().await.unwrap();
    let (ci, ci_id) = (r["token"].as_str().unwrap().to_owned(), r["api_token"]["api_token_id"].as_str().unwrap().to_owned());
    let expires = time::OffsetDateTime::parse(r["api_token"]["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    let days = (expires - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((23..=24).contains(&days), "expires in {days} h: {r}");
    assert_eq!(status_with(&cp, &ci).await, 200);

    // Listed with its use, never with the token or its hash.
    let list = cp.get("/api/v1/tokens").await;
    let text = list.to_string();
    assert!(!text.contains(&ci) && !text.contains("hash"), "{list}");
    let row = list.as_array().unwrap().iter().find(|t| t["api_token_id"] == ci_id.as_str()).unwrap().clone();
    assert!(row["last_used_at"].is_string() && row["revoked_at"].is_null(), "{row}");

    // Revoked: refused at once.
    let r = cp.http.delete(format!("{}/api/v1/tokens/{ci_id}", cp.url)).bearer_auth(&cp.token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(status_with(&cp, &ci).await, 401, "a revoked token still works");
    let list = cp.get("/api/v1/tokens").await;
    assert!(list.as_array().unwrap().iter().any(|t| t["api_token_id"] == ci_id.as_str() && t["revoked_at"].is_string()), "{list}");
    let r = cp.http.delete(format!("{}/api/v1/tokens/{}", cp.url, uuid::Uuid::new_v4())).bearer_auth(&cp.token).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Expired: refused.
    let r: Value = new_token("short", json!(1)).await.unwrap().json().await.unwrap();
    let short = r["token"].as_str().unwrap().to_owned();
    assert_eq!(status_with(&cp, &short).await, 200);
    let db = sqlx::PgPool::connect(&postgres().url(cp.database())).await.unwrap();
    sqlx::query("update api_token set expires_at = now() - interval '1 minute' where name = 'short'").execute(&db).await.unwrap();
    assert_eq!(status_with(&cp, &short).await, 401, "an expired token still works");

    // The dashboard page: create one (shown once), revoke it.
    let (session, csrf) = crate::control_auth::login(&cp).await;
    let post = |path: &str, body: String| cp.http.post(format!("{}{path}", cp.url)).header("cookie", &session).header("content-type", "application/x-www-form-urlencoded").body(body).send();
    let html = post("/tokens", format!("csrf={csrf}&name=from-the-page&valid_days=7")).await.unwrap().text().await.unwrap();
    let i = html.find("id=\"new-api-token\">").expect("no new token shown") + 19;
    let page_token = html[i..i + html[i..].find('<').unwrap()].to_owned();
    assert_eq!(status_with(&cp, &page_token).await, 200);
    let list = cp.get("/api/v1/tokens").await;
    let id = list.as_array().unwrap().iter().find(|t| t["name"] == "from-the-page").unwrap()["api_token_id"].as_str().unwrap().to_owned();
    let r = post(&format!("/tokens/{id}/revoke"), format!("csrf={csrf}")).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(status_with(&cp, &page_token).await, 401);
    let html = cp.http.get(format!("{}/tokens", cp.url)).header("cookie", &session).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("from-the-page") && html.contains("revoked") && !html.contains(&page_token), "{html}");
    assert_eq!(post(&format!("/tokens/{id}/revoke"), "csrf=wrong".into()).await.unwrap().status(), 403);
}
