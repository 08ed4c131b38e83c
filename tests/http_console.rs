//! The console over plain HTTP on every configured store: signing in and the session cookie,
//! roles, CSRF, escaping of agent- and operator-supplied text, security headers, and the
//! actions landing in the same API state as their API counterparts.

mod common;

use common::agents::*;
use common::server::*;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; returns the session cookie (`name=value`).
async fn sign_in(s: &TestServer, token: &str) -> String {
    let r = no_redirects()
        .post(s.url("/ui/login"))
        .form(&[("token", token), ("next", "/ui/rollbacks")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", s.name);
    assert_eq!(r.headers()[LOCATION], "/ui/rollbacks");
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains(token),
        "the cookie does not show the token in clear"
    );
    cookie.split(';').next().unwrap().to_string()
}

async fn get(s: &TestServer, cookie: &str, path: &str) -> (StatusCode, String) {
    let r = no_redirects()
        .get(s.url(path))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

async fn post_form(
    s: &TestServer,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    no_redirects()
        .post(s.url(path))
        .header(COOKIE, cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

/// Drawn nodes whose class list has `class`.
fn nodes_with(page: &str, class: &str) -> usize {
    page.split("class=\"node ")
        .skip(1)
        .filter(|rest| {
            rest.split('"')
                .next()
                .unwrap_or("")
                .split(' ')
                .any(|c| c == class)
        })
        .count()
}

fn csrf_of(token: &str) -> String {
    unwind::ui::csrf_token(token)
}

#[tokio::test]
async fn signing_in_sets_a_protected_cookie_and_pages_need_it() {
    for s in servers().await {
        let client = no_redirects();
        let r = client.get(s.url("/ui/rollbacks")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[LOCATION], "/ui/login?next=%2Fui%2Frollbacks");

        let r = client
            .post(s.url("/ui/login"))
            .form(&[("token", "not-a-token")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.text().await.unwrap().contains("not known"));

        // An offered `next` outside the console is not followed.
        let r = client
            .post(s.url("/ui/login"))
            .form(&[("token", READER_TOKEN), ("next", "//evil.example/")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()[LOCATION], "/ui/workflows");

        let cookie = sign_in(&s, READER_TOKEN).await;
        let r = client
            .get(s.url("/ui/workflows"))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", s.name);
        assert!(
            r.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let csp = r.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));

        // A forged cookie is no session.
        let (status, _) = get(&s, "unwind_session=Zm9yZ2Vk", "/ui/workflows").await;
        assert_eq!(status, StatusCode::SEE_OTHER);

        let (status, body) = get(&s, &cookie, "/ui/no-such-page").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("code: <code>not_found</code>"), "{body}");

        // The assets are served by Unwind itself.
        let css = client
            .get(s.url("/ui/assets/console.css"))
            .send()
            .await
            .unwrap();
        assert_eq!(css.status(), StatusCode::OK);
        let js = client
            .get(s.url("/ui/assets/console.js"))
            .send()
            .await
            .unwrap();
        assert!(js.text().await.unwrap().contains("EventSource"));
    }
}

#[tokio::test]
async fn actions_need_an_operator_and_the_session_csrf_token() {
    for s in servers().await {
        let log = Log::default();
        let a = start_agent(&s, "a", "prepared", 0, &log).await;
        let b = start_agent(&s, "b", "prepared", 0, &log).await;
        let wid = wid();
        let (_, cp_b, _) = seed_figure(&s, &a, &b, &wid).await;

        let reader = sign_in(&s, READER_TOKEN).await;
        let r = post_form(
            &s,
            &reader,
            "/ui/rollbacks",
            &[("checkpoint_id", &cp_b), ("csrf", &csrf_of(READER_TOKEN))],
        )
        .await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{}: a reader cannot act",
            s.name
        );

        let operator = sign_in(&s, OPERATOR_TOKEN).await;
        let r = post_form(&s, &operator, "/ui/rollbacks", &[("checkpoint_id", &cp_b)]).await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "no CSRF token, no action"
        );
        let r = post_form(
            &s,
            &operator,
            "/ui/rollbacks",
            &[("checkpoint_id", &cp_b), ("csrf", &csrf_of(READER_TOKEN))],
        )
        .await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "another session's CSRF token"
        );

        let reason = "<script>alert('x')</script> & co";
        let r = post_form(
            &s,
            &operator,
            "/ui/rollbacks",
            &[
                ("checkpoint_id", cp_b.as_str()),
                ("scope", "single"),
                ("reason", reason),
                ("on_cannot_prepare", "auto"),
                ("csrf", csrf_of(OPERATOR_TOKEN).as_str()),
            ],
        )
        .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", s.name);
        let location = r.headers()[LOCATION].to_str().unwrap().to_string();
        let id = location
            .strip_prefix("/ui/rollbacks/")
            .unwrap()
            .replace("%3A", ":");
        let done = wait_for(&s, &id, &["completed", "partial", "failed"]).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["requested_by"], "operator:ops");
        assert_eq!(done["scope"], "single");
        assert_eq!(done["reason"], reason);

        // What operators typed is shown as text, never as markup.
        let (status, page) = get(&s, &operator, &location).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            page.contains("&lt;script&gt;alert('x')&lt;/script&gt; &amp; co"),
            "{page}"
        );
        assert!(!page.contains("<script>alert"));

        // A choice outside the offered ones is refused as the API would.
        let r = post_form(
            &s,
            &operator,
            "/ui/rollbacks",
            &[
                ("checkpoint_id", &cp_b),
                ("scope", "everything"),
                ("csrf", &csrf_of(OPERATOR_TOKEN)),
            ],
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

        // Deciding a rollback that awaits nothing shows the API's code.
        let r = post_form(
            &s,
            &operator,
            &format!("{location}/decision"),
            &[("decision", "abort"), ("csrf", &csrf_of(OPERATOR_TOKEN))],
        )
        .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(r.text().await.unwrap().contains("not_awaiting_decision"));

        // The live page's stream, behind the session like the page.
        let r = no_redirects()
            .get(s.url(&format!("{location}/events")))
            .header(COOKIE, &operator)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let text = r.text().await.unwrap();
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let event: Value = serde_json::from_str(data).unwrap();
        assert_eq!(event["status"], "completed");
    }
}

#[tokio::test]
async fn the_dag_page_draws_every_node_and_the_selected_blast_radius() {
    for s in servers().await {
        let log = Log::default();
        let a = start_agent(&s, "a", "prepared", 0, &log).await;
        let b = start_agent(&s, "b", "prepared", 0, &log).await;
        let wid = wid();
        let figure = sign_figure(&a, &b, &wid).await;
        s.ingest_ok(&figure.tokens).await;
        let cookie = sign_in(&s, READER_TOKEN).await;

        let (status, page) = get(&s, &cookie, &format!("/ui/workflows/{wid}")).await;
        assert_eq!(status, StatusCode::OK, "{}", s.name);
        assert_eq!(page.matches("data-jti=").count(), 5, "{page}");
        assert_eq!(
            nodes_with(&page, "in-blast"),
            0,
            "nothing selected, no blast radius"
        );

        let (_, page) = get(
            &s,
            &cookie,
            &format!("/ui/workflows/{wid}?node={}", figure.a1),
        )
        .await;
        // A1's blast radius: A1, B, B1, B2 (not A).
        assert!(page.contains("4 nodes, 2 agents"), "{page}");
        assert_eq!(nodes_with(&page, "in-blast"), 4, "{page}");
        assert_eq!(nodes_with(&page, "selected"), 1);

        let (status, _) = get(&s, &cookie, "/ui/workflows/no-such-workflow").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

/// Ingests a fan-out whose three children fail (a breadth-first cascade); returns (wid, fan).
async fn breadth_first_cascade(s: &TestServer) -> (String, String) {
    let w = wid();
    let fan = format!("fan-{}", uuid::Uuid::new_v4());
    s.ingest_ok(&[s.sign(&claims("x", &fan, &w, "dispatch", &[]))])
        .await;
    let children: Vec<String> = ["x", "y", "z"]
        .iter()
        .map(|agent| {
            let jti = format!("err-{}", uuid::Uuid::new_v4());
            s.sign(&claims(agent, &jti, &w, "error", &[&fan]))
        })
        .collect();
    s.ingest_ok(&children).await;
    (w, fan)
}

#[tokio::test]
async fn the_on_call_pages_show_open_breakers_cascades_and_errors() {
    let config = |c: &mut unwind::config::Config| {
        short(c);
        c.circuit.min_calls = 3;
        c.circuit.cooldown_s = 30;
        c.circuit.max_cooldown_s = 60;
    };
    for s in servers_with(config).await {
        let log = Log::default();
        let a = start_agent(&s, "flaky", "fail:1000", 0, &log).await;
        let (cp, token) = a.checkpoint(&wid(), &[]).await;
        s.ingest_ok(&[token]).await;
        accepted(
            &s,
            serde_json::json!({"checkpoint_id": cp, "scope": "single"}),
        )
        .await;
        let (w, fan) = breadth_first_cascade(&s).await;
        let cookie = sign_in(&s, READER_TOKEN).await;

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let (circuits, cascades) = loop {
            let (_, circuits) = get(&s, &cookie, "/ui/circuits").await;
            let (_, cascades) = get(&s, &cookie, "/ui/cascades").await;
            let open = circuits.contains(&format!(
                "data-agent=\"{AGENT_PREFIX}flaky\"><td><span class=\"agent\" title=\"{AGENT_PREFIX}flaky\">{AGENT_PREFIX}flaky</span></td><td><span class=\"badge s-open\">"
            ));
            if open && cascades.contains("breadth first") {
                break (circuits, cascades);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: no open breaker or cascade shown:\n{circuits}\n{cascades}",
                s.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        assert!(circuits.contains("100 %"), "{circuits}");
        assert!(
            cascades.contains(&format!("?node={fan}")),
            "the root cause links to its node"
        );

        let (_, dag) = get(&s, &cookie, &format!("/ui/workflows/{w}")).await;
        assert_eq!(nodes_with(&dag, "k-error"), 3, "{dag}");
    }
}

/// A rollback of the seed figure whose critical step cannot prepare, waiting for a decision;
/// returns (rollback id, the id of its open escalation).
async fn awaiting_decision(s: &TestServer, log: &Log) -> (String, String) {
    let a = start_agent(s, "a", "cannot_prepare", 0, log).await;
    let b = start_agent(s, "b", "prepared", 0, log).await;
    let (cp_a, _, _) = seed_figure(s, &a, &b, &wid()).await;
    let id = accepted(s, serde_json::json!({"checkpoint_id": cp_a})).await;
    wait_for(s, &id, &["awaiting_decision"]).await;
    let escalation = open_escalation(s, &id).await.expect("an open escalation");
    // The agents are dropped with the test; the rollback waits for a person until then.
    std::mem::forget((a, b));
    (id, escalation)
}

/// The open escalation of rollback `id`, if any.
async fn open_escalation(s: &TestServer, id: &str) -> Option<String> {
    let (status, page) = s.get_json("/v1/escalations?status=open").await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["rollback_id"] == id)
        .map(|e| e["id"].as_str().unwrap().to_string())
}

async fn status_of(s: &TestServer, id: &str) -> Value {
    let (_, r) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
    r["status"].clone()
}

#[tokio::test]
async fn every_console_form_refuses_a_missing_or_foreign_csrf_token() {
    for s in servers().await {
        let log = Log::default();
        let (id, escalation) = awaiting_decision(&s, &log).await;
        let operator = sign_in(&s, OPERATOR_TOKEN).await;
        let decision = format!("/ui/rollbacks/{id}/decision");
        let resolve = format!("/ui/escalations/{escalation}/resolve");
        let foreign = csrf_of(READER_TOKEN);
        for csrf in [None, Some(foreign.as_str()), Some("")] {
            let with = |mut form: Vec<(&'static str, String)>| {
                if let Some(c) = csrf {
                    form.push(("csrf", c.to_string()));
                }
                form
            };
            let cases = [
                (decision.as_str(), with(vec![("decision", "abort".into())])),
                (resolve.as_str(), with(vec![("comment", "done".into())])),
                ("/ui/logout", with(vec![])),
            ];
            for (path, form) in cases {
                let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let r = post_form(&s, &operator, path, &form).await;
                assert_eq!(
                    r.status(),
                    StatusCode::FORBIDDEN,
                    "{}: {path} with csrf {csrf:?}",
                    s.name
                );
                assert!(
                    r.headers().get(SET_COOKIE).is_none(),
                    "{path}: a refused form changes no cookie"
                );
                assert!(r.text().await.unwrap().contains("forbidden"));
            }
            assert_eq!(
                status_of(&s, &id).await,
                "awaiting_decision",
                "{}: the decision was not applied",
                s.name
            );
            assert_eq!(
                open_escalation(&s, &id).await.as_deref(),
                Some(escalation.as_str()),
                "{}: the escalation is still open",
                s.name
            );
            let (status, _) = get(&s, &operator, "/ui/workflows").await;
            assert_eq!(status, StatusCode::OK, "still signed in");
        }

        // With the session's token each form acts.
        let csrf = csrf_of(OPERATOR_TOKEN);
        let r = post_form(&s, &operator, "/ui/logout", &[("csrf", &csrf)]).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert!(
            r.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        let r = post_form(
            &s,
            &operator,
            &resolve,
            &[("comment", "seen"), ("csrf", &csrf)],
        )
        .await;
        // Past the CSRF check, the API's own rule: an escalation whose rollback awaits a
        // decision is closed by deciding.
        assert_eq!(r.status(), StatusCode::CONFLICT, "{}", s.name);
        assert!(r.text().await.unwrap().contains("decision_required"));
        let r = post_form(
            &s,
            &operator,
            &decision,
            &[("decision", "abort"), ("csrf", &csrf)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", s.name);
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["decision"]["decision"], "abort", "{done}");
    }
}

#[tokio::test]
async fn a_return_path_that_cannot_be_followed_refuses_the_decision_before_it_is_applied() {
    for s in servers().await {
        let log = Log::default();
        let (id, _) = awaiting_decision(&s, &log).await;
        let operator = sign_in(&s, OPERATOR_TOKEN).await;
        let csrf = csrf_of(OPERATOR_TOKEN);
        let decision = format!("/ui/rollbacks/{id}/decision");
        for back in [
            "/ui/escalations\r\nSet-Cookie: x=1",
            "/ui/escalations\n",
            "/ui/esc\u{7f}alations",
            "/ui/esc alations",
            "/ui/\u{202e}snoitalacse",
            "/ui/../v1/rollbacks",
            "/ui/%2e%2e/v1/rollbacks",
            "/ui//evil.example/",
            "/ui/\\evil.example",
            "https://evil.example/ui/",
            "/v1/rollbacks",
        ] {
            let r = post_form(
                &s,
                &operator,
                &decision,
                &[("decision", "abort"), ("back", back), ("csrf", &csrf)],
            )
            .await;
            assert_eq!(
                r.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{}: back {back:?}",
                s.name
            );
            assert!(r.text().await.unwrap().contains("invalid_request"));
            assert_eq!(
                status_of(&s, &id).await,
                "awaiting_decision",
                "{}: back {back:?} applied the decision",
                s.name
            );
        }
        let r = post_form(
            &s,
            &operator,
            &decision,
            &[
                ("decision", "abort"),
                ("back", "/ui/escalations?x=1#open"),
                ("csrf", &csrf),
            ],
        )
        .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", s.name);
        assert_eq!(r.headers()[LOCATION], "/ui/escalations?x=1#open");
        wait_for(&s, &id, TERMINAL).await;
    }
}

#[tokio::test]
async fn signing_in_never_follows_a_next_with_control_characters() {
    let s = sqlite_server().await;
    for next in [
        "/ui/rollbacks\r\nSet-Cookie: x=1",
        "/ui/rollbacks\n",
        "/ui/roll\u{7f}backs",
        "/ui/roll\u{0}backs",
        "/ui/../v1/ects",
    ] {
        let r = no_redirects()
            .post(s.url("/ui/login"))
            .form(&[("token", OPERATOR_TOKEN), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "next {next:?}");
        assert_eq!(r.headers()[LOCATION], "/ui/workflows", "next {next:?}");
        assert!(
            r.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("HttpOnly")
        );
        // The sign-in page offers only a followable `next` back.
        let r = no_redirects()
            .get(reqwest::Url::parse_with_params(&s.url("/ui/login"), [("next", next)]).unwrap())
            .send()
            .await
            .unwrap();
        if next.contains('\0') {
            // A URL with U+0000 is refused before any page (see fuzz_regressions).
            assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
            continue;
        }
        assert_eq!(r.status(), StatusCode::OK, "next {next:?}");
        let page = r.text().await.unwrap();
        assert!(
            page.contains("name=\"next\" value=\"/ui/workflows\""),
            "{page}"
        );
    }
}

#[tokio::test]
async fn a_sign_in_posted_from_another_site_is_refused() {
    let s = sqlite_server().await;
    let own_origin = s.base.clone();
    let post = |headers: Vec<(&'static str, String)>| {
        let mut r = no_redirects()
            .post(s.url("/ui/login"))
            .form(&[("token", OPERATOR_TOKEN), ("next", "/ui/rollbacks")]);
        for (name, value) in headers {
            r = r.header(name, value);
        }
        r.send()
    };
    for refused in [
        vec![("origin", "https://evil.example".to_string())],
        vec![("origin", "null".to_string())],
        vec![("origin", own_origin.replace("127.0.0.1", "localhost"))],
        vec![("sec-fetch-site", "cross-site".to_string())],
        vec![("sec-fetch-site", "same-site".to_string())],
        vec![
            ("origin", own_origin.clone()),
            ("sec-fetch-site", "cross-site".to_string()),
        ],
    ] {
        let r = post(refused.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{refused:?}");
        assert!(r.headers().get(SET_COOKIE).is_none(), "{refused:?}");
        assert!(r.text().await.unwrap().contains("forbidden"));
    }
    for allowed in [
        vec![],
        vec![("origin", own_origin.clone())],
        vec![("sec-fetch-site", "same-origin".to_string())],
        vec![("sec-fetch-site", "none".to_string())],
        vec![
            ("origin", own_origin.clone()),
            ("sec-fetch-site", "same-origin".to_string()),
        ],
    ] {
        let r = post(allowed.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{allowed:?}");
        assert!(r.headers().get(SET_COOKIE).is_some(), "{allowed:?}");
    }
}

#[tokio::test]
async fn the_session_cookie_is_secure_when_the_public_url_is_https() {
    let https = |c: &mut unwind::config::Config| {
        c.public_url = Some("https://unwind.example".into());
    };
    for (s, secure) in [
        (servers_with(https).await.remove(0), true),
        (sqlite_server().await, false),
    ] {
        // The browser's own origin is the public URL's.
        let r = no_redirects()
            .post(s.url("/ui/login"))
            .header("origin", s.config.public_url())
            .form(&[("token", READER_TOKEN)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r.headers()[SET_COOKIE].to_str().unwrap();
        let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
        assert_eq!(
            attributes.contains(&"Secure"),
            secure,
            "{}: {cookie}",
            s.config.public_url()
        );
    }
}

#[tokio::test]
async fn agents_are_shown_by_their_whole_id() {
    for s in servers().await {
        let log = Log::default();
        let a = start_agent(&s, "a", "prepared", 0, &log).await;
        let b = start_agent(&s, "admin", "prepared", 0, &log).await;
        let wid = wid();
        let figure = sign_figure(&a, &b, &wid).await;
        s.ingest_ok(&figure.tokens).await;
        let cookie = sign_in(&s, READER_TOKEN).await;
        let admin = format!("{AGENT_PREFIX}admin");
        let shown = format!("<span class=\"agent\" title=\"{admin}\">{admin}</span>");

        let (_, page) = get(
            &s,
            &cookie,
            &format!("/ui/workflows/{wid}?node={}", figure.cp_b),
        )
        .await;
        // The node table, the selected node's panel and its blast radius's agents.
        assert!(page.matches(&shown).count() >= 3, "{}: {page}", s.name);
        assert!(!page.contains("<td>admin</td>"), "{page}");
        assert!(
            !page.contains(">admin<"),
            "never the last segment alone: {page}"
        );
        // The drawing has room for little: the id shortened visibly, the whole in its label.
        assert!(page.contains(&format!(" by {admin}, ")), "{page}");
        assert!(
            page.contains("<text class=\"sub\" x=\"8\" y=\"34\">example.c…nt/admin</text>"),
            "{page}"
        );

        let (_, ect) = get(&s, &cookie, &format!("/ui/ects/{}", figure.cp_b)).await;
        assert!(ect.contains(&shown), "{ect}");
    }
}
