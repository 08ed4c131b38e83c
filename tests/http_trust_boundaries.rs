//! The trust boundaries an agent key meets at ingest and when it asks for a rollback, on both
//! stores over real HTTP: whose nodes a trust entry may link to (`link_to`), the standing that
//! linking gives, SPIFFE ids, rollback URIs that could never be called, atomic ingest of a
//! request's `Execution-Context`, and the per-entry rollback request rate.

mod common;

use common::server::{
    AGENT_PREFIX, OPERATOR_TOKEN, TestServer, assert_problem, checkpoint_claims, claims,
    servers_with,
};
use serde_json::{Map, Value, json};
use unwind::config::{Config, TrustIssuerConfig};
use unwind::ect::Profile;

/// An agent of another trust domain, trusted through its own entry.
const OUTSIDER: &str = "spiffe://other.org/team/outsider";
const OUTSIDER_ENTRY: &str = "spiffe://other.org/team/*";

fn wid() -> String {
    format!("wf-{}", uuid::Uuid::new_v4())
}

fn jti() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Adds the `other.org` entry, signed by the test server's `other_key` (its JWKS file is the
/// one the server wrote for its second entry), with `link_to` as given.
fn with_outsider(link_to: Option<Vec<String>>) -> impl Fn(&mut Config) {
    move |c: &mut Config| {
        let jwks = c.trust.issuers[1].jwks_file.clone();
        c.trust.issuers.push(TrustIssuerConfig {
            id: OUTSIDER_ENTRY.into(),
            jwks_file: jwks,
            rollback_hosts: vec!["127.0.0.1".into()],
            allow_http: true,
            link_to: link_to.clone(),
            ..Default::default()
        });
    }
}

/// Signs with the key of the server's second entry, which the `other.org` entry shares.
fn signed_by_other(s: &TestServer, claims: &Map<String, Value>) -> String {
    s.other_key.sign_ect(claims, Profile::Draft00).unwrap()
}

/// Claims of `iss` (any id), addressed to Unwind.
fn claims_of(
    iss: &str,
    jti: &str,
    wid: &str,
    exec_act: &str,
    parents: &[&str],
) -> Map<String, Value> {
    let mut c = claims("x", jti, wid, exec_act, parents);
    c.insert("iss".into(), json!(iss));
    c
}

async fn post_single(s: &TestServer, context: Option<&str>, token: &str) -> reqwest::Response {
    let mut request = s
        .client
        .post(s.url("/v1/ects"))
        .header("content-type", "application/jwt")
        .body(token.to_string());
    request = match context {
        Some(c) => request.header("execution-context", c),
        None => request.bearer_auth(OPERATOR_TOKEN),
    };
    request.send().await.unwrap()
}

async fn post_batch_as(s: &TestServer, context: &str, tokens: &[String]) -> reqwest::Response {
    s.client
        .post(s.url("/v1/ects"))
        .header("execution-context", context)
        .json(&json!({ "tokens": tokens }))
        .send()
        .await
        .unwrap()
}

async fn request_rollback(s: &TestServer, context: &str, checkpoint: &str) -> reqwest::Response {
    s.client
        .post(s.url("/v1/rollbacks"))
        .header("execution-context", context)
        .json(&json!({ "checkpoint_id": checkpoint, "scope": "single" }))
        .send()
        .await
        .unwrap()
}

async fn stored(s: &TestServer, jti: &str) -> bool {
    s.get_json(&format!("/v1/ects/{jti}")).await.0 == 200
}

/// The ledger's size and its chain's length, which must move together.
async fn ledger_size(s: &TestServer) -> (i64, u64) {
    let (status, head) = s.get_json("/v1/ledger/head").await;
    assert_eq!(status, 200, "{head}");
    (s.count().await, head["seq"].as_u64().unwrap_or(0))
}

/// Records the router's checkpoint `C` in a new workflow; returns (wid, C).
async fn router_checkpoint(s: &TestServer) -> (String, String) {
    let wid = wid();
    let (root, cp) = (jti(), jti());
    s.ingest_ok(&[
        s.sign(&claims("router", &root, &wid, "plan", &[])),
        s.sign(&checkpoint_claims("router", &cp, &wid, &[&root])),
    ])
    .await;
    (wid, cp)
}

#[tokio::test]
async fn an_outside_trust_domain_cannot_join_a_workflow_and_gain_standing() {
    for s in servers_with(with_outsider(None)).await {
        let (wid, cp) = router_checkpoint(&s).await;
        let before = ledger_size(&s).await;
        let e = signed_by_other(&s, &claims_of(OUTSIDER, &jti(), &wid, "act", &[&cp]));
        let r = post_single(&s, Some(&e), &e).await;
        assert_problem(r, 422, "parent_not_linkable", s.name).await;
        let r = post_single(&s, None, &e).await;
        assert_problem(r, 422, "parent_not_linkable", s.name).await;
        assert_eq!(ledger_size(&s).await, before, "{}: nothing stored", s.name);
        // Without the descendant it could not attach, it has no standing over C.
        let r = request_rollback(&s, &e, &cp).await;
        assert_problem(r, 403, "forbidden", s.name).await;
        let (_, page) = s.get_json("/v1/rollbacks").await;
        assert_eq!(page["items"], json!([]), "{}", s.name);

        // Unwind's own evidence is linkable by every entry: an operator's rollback of C signs
        // a rollback_start, and the outsider may build on it.
        let r = s
            .client
            .post(s.url("/v1/rollbacks"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({ "checkpoint_id": cp, "scope": "single" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", s.name);
        let body: Value = r.json().await.unwrap();
        let id = body["rollback_id"].as_str().unwrap().to_string();
        let mut start = None;
        for _ in 0..100 {
            let (_, r) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
            if let Some(jti) = r["evidence"]["rollback_start"].as_str()
                && stored(&s, jti).await
            {
                start = Some(jti.to_string());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let start = start.expect("rollback_start signed");
        let on_evidence =
            signed_by_other(&s, &claims_of(OUTSIDER, &jti(), &wid, "observe", &[&start]));
        let r = post_single(&s, None, &on_evidence).await;
        assert_eq!(r.status(), 201, "{}: {}", s.name, r.text().await.unwrap());
    }
}

#[tokio::test]
async fn link_to_lets_a_named_entry_build_on_another_domain() {
    let link = Some(vec![format!("{AGENT_PREFIX}*")]);
    for s in servers_with(with_outsider(link.clone())).await {
        let (wid, cp) = router_checkpoint(&s).await;
        let e = signed_by_other(&s, &claims_of(OUTSIDER, &jti(), &wid, "act", &[&cp]));
        // Itself as context and as body: the body is a duplicate of the context.
        let r = post_single(&s, Some(&e), &e).await;
        assert_eq!(r.status(), 200, "{}: {}", s.name, r.text().await.unwrap());
        let r = request_rollback(&s, &e, &cp).await;
        assert_eq!(r.status(), 202, "{}: {}", s.name, r.text().await.unwrap());

        // The link is one way: the router's domain did not name other.org.
        let outsider_node = jti();
        let node = signed_by_other(&s, &claims_of(OUTSIDER, &outsider_node, &wid, "act", &[]));
        assert_eq!(
            post_single(&s, None, &node).await.status(),
            201,
            "{}",
            s.name
        );
        let back = s.sign(&claims("router", &jti(), &wid, "follow", &[&outsider_node]));
        let r = post_single(&s, None, &back).await;
        assert_problem(r, 422, "parent_not_linkable", s.name).await;
    }
}

/// The remaining limit (docs/security.md): inside one trust domain, any agent may attach a
/// child to a checkpoint and so gain standing over it.
#[tokio::test]
async fn inside_one_trust_domain_attaching_a_child_gives_standing() {
    for s in servers_with(|_| {}).await {
        let (wid, cp) = router_checkpoint(&s).await;
        let mut c = claims("mallory", &jti(), &wid, "act", &[&cp]);
        c.insert("aud".into(), json!([s.coordinator_id]));
        let e = s.sign(&c);
        assert_eq!(
            post_single(&s, Some(&e), &e).await.status(),
            200,
            "{}",
            s.name
        );
        let r = request_rollback(&s, &e, &cp).await;
        assert_eq!(r.status(), 202, "{}: {}", s.name, r.text().await.unwrap());
    }
}

#[tokio::test]
async fn issuers_that_are_not_valid_spiffe_ids_match_no_trust_entry() {
    for s in servers_with(|_| {}).await {
        let wid = wid();
        for iss in [
            "spiffe://example.com/agent/../admin",
            "spiffe://example.com/agent/./admin",
            "spiffe://example.com/agent//admin",
            "spiffe://example.com/agent/%61dmin",
            "spiffe://example.com/agent/admin?x=1",
            "spiffe://example.com/agent/admin#x",
            "spiffe://example.com/agent/ad min",
            "spiffe://example.com/agent/\u{202e}nimda",
            "spiffe://example.com/agent/admin/",
        ] {
            let token = s.sign(&claims_of(iss, &jti(), &wid, "act", &[]));
            let r = post_single(&s, None, &token).await;
            assert_problem(r, 422, "unknown_issuer", iss).await;
        }
        assert_eq!(s.count().await, 0, "{}", s.name);
    }
}

#[tokio::test]
async fn checkpoints_whose_rollback_uri_could_never_be_called_are_refused() {
    for s in servers_with(|_| {}).await {
        let wid = wid();
        for uri in [
            "http://127.0.0.1:9/rollback?x=1",
            "http://127.0.0.1:9/rollback#frag",
            " http://127.0.0.1:9/rollback",
            "\thttp://127.0.0.1:9/rollback",
            "http://127.0.0.1:9/roll back",
            "http:\\\\127.0.0.1:9\\rollback",
            "http://127.0.0.1:9/rollback\n",
        ] {
            let mut c = checkpoint_claims("router", &jti(), &wid, &[]);
            c["ext"]["cascade.rollback_uri"] = json!(uri);
            let r = post_single(&s, None, &s.sign(&c)).await;
            assert_problem(r, 422, "invalid_checkpoint", &format!("{uri:?}")).await;
        }
        assert_eq!(s.count().await, 0, "{}", s.name);
    }
}

#[tokio::test]
async fn a_refused_request_stores_none_of_its_tokens() {
    for s in servers_with(|_| {}).await {
        let wid = wid();
        let base = jti();
        s.ingest_ok(&[s.sign(&claims("planner", &base, &wid, "plan", &[]))])
            .await;
        let good_body = || s.sign(&claims("planner", &jti(), &wid, "act", &[&base]));
        let good_context = || s.sign(&claims("planner", &jti(), &wid, "ctx", &[&base]));
        let unknown_parent =
            || s.sign(&claims("planner", &jti(), &wid, "act", &["no-such-parent"]));
        let before = ledger_size(&s).await;

        // A refused context (unknown parent): its own error, and the body is not stored.
        let body = good_body();
        let r = post_single(&s, Some(&unknown_parent()), &body).await;
        assert_problem(r, 422, "unknown_parent", "context: unknown parent").await;
        assert_eq!(ledger_size(&s).await, before, "{}", s.name);

        // A refused context (jti conflict with a stored token): 409, nothing stored.
        let conflicting = s.sign(&claims("planner", &base, &wid, "other", &[]));
        let body = good_body();
        let r = post_single(&s, Some(&conflicting), &body).await;
        assert_problem(r, 409, "jti_conflict", "context: jti conflict").await;
        let r = post_batch_as(&s, &conflicting, &[good_body()]).await;
        assert_problem(r, 409, "jti_conflict", "context: jti conflict, batch").await;
        assert_eq!(ledger_size(&s).await, before, "{}", s.name);

        // A refused single body: its error, and the context is not stored.
        let context = good_context();
        let context_jti = jti_of(&context);
        let r = post_single(&s, Some(&context), &unknown_parent()).await;
        assert_problem(r, 422, "unknown_parent", "single body refused").await;
        assert!(!stored(&s, &context_jti).await, "{}", s.name);
        assert_eq!(ledger_size(&s).await, before, "{}", s.name);

        // A batch whose every item is refused: per-item results, and no context.
        let r = post_batch_as(&s, &context, &[unknown_parent(), unknown_parent()]).await;
        assert_eq!(r.status(), 200, "{}", s.name);
        let answer: Value = r.json().await.unwrap();
        let statuses: Vec<&str> = answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["rejected", "rejected"], "{answer}");
        assert!(!stored(&s, &context_jti).await, "{}", s.name);
        assert_eq!(ledger_size(&s).await, before, "{}", s.name);

        // A batch in which an item succeeds stores the context with it.
        let good = good_body();
        let r = post_batch_as(&s, &context, &[unknown_parent(), good.clone()]).await;
        assert_eq!(r.status(), 200, "{}", s.name);
        assert!(stored(&s, &context_jti).await, "{}", s.name);
        assert!(stored(&s, &jti_of(&good)).await, "{}", s.name);
        assert_eq!(
            ledger_size(&s).await,
            (before.0 + 2, before.1 + 2),
            "{}",
            s.name
        );

        // A context whose body names it as a parent, both new: stored together.
        let context = good_context();
        let child = s.sign(&claims(
            "planner",
            &jti(),
            &wid,
            "act",
            &[&jti_of(&context)],
        ));
        let r = post_single(&s, Some(&context), &child).await;
        assert_eq!(r.status(), 201, "{}", s.name);
        assert_eq!(
            ledger_size(&s).await,
            (before.0 + 4, before.1 + 4),
            "{}",
            s.name
        );
    }
}

#[tokio::test]
async fn a_wildcard_entry_cannot_mint_ids_to_evade_the_rollback_rate_limit() {
    for s in servers_with(|c| {
        c.trust.issuers[0].requests_per_s = Some(1);
        c.rollback.requests_per_s = 100;
        c.rollback.requests_burst = 100;
    })
    .await
    {
        let wid = wid();
        let mut codes = Vec::new();
        for agent in ["a1", "a2", "a3", "a4"] {
            let mut c = claims(agent, &jti(), &wid, "ask", &[]);
            c.insert("aud".into(), json!([s.coordinator_id]));
            let r = request_rollback(&s, &s.sign(&c), "no-such-checkpoint").await;
            codes.push(r.status().as_u16());
        }
        // Burst 2 for the entry, although each id asks once.
        assert_eq!(codes, [404, 404, 429, 429], "{}", s.name);
        // Another entry has its own budget.
        let other = signed_by_other(
            &s,
            &claims_of(common::server::OTHER_ISSUER, &jti(), &wid, "ask", &[]),
        );
        assert_eq!(
            request_rollback(&s, &other, "no-such-checkpoint")
                .await
                .status(),
            404,
            "{}",
            s.name
        );
    }
}

/// The `jti` of a compact token (read, not verified: the test made it).
fn jti_of(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: Value = serde_json::from_slice(&bytes).unwrap();
    claims["jti"].as_str().unwrap().to_string()
}
