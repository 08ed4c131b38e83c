//! Reading the ledger over HTTP: tokens, workflows, DAG renderings, blast radius, and the
//! operational endpoints (health, readiness, metrics, keys, OpenAPI, docs).

mod common;

use common::server::*;
use serde_json::{Value, json};

/// The cascade draft's figure: Checkpoint A -> A1 -> Checkpoint B -> B1, B2 (agents a and b),
/// plus an irreversible checkpoint and an expired one under B.
async fn seed_figure(s: &TestServer, wid: &str) {
    let mut irreversible = claims("b", "B-irr", wid, "checkpoint", &["B"]);
    irreversible.insert(
        "ext".into(),
        json!({"cascade.reversible": false, "cascade.description": "email sent"}),
    );
    let mut expired = checkpoint_claims("c", "B-old", wid, &["B"]);
    expired.insert("ext".into(), json!({"cascade.reversible": true, "cascade.rollback_uri": "http://127.0.0.1:9/rb", "cascade.ttl": 1}));
    let tokens = vec![
        s.sign(&checkpoint_claims("a", "A", wid, &[])),
        s.sign(&claims("a", "A1", wid, "reconfigure", &["A"])),
        s.sign(&checkpoint_claims("b", "B", wid, &["A1"])),
        s.sign(&claims("b", "B1", wid, "update_dns", &["B"])),
        s.sign(&claims("b", "B2", wid, "notify", &["B"])),
        s.sign(&irreversible),
        s.sign(&expired),
    ];
    s.ingest_ok(&tokens).await;
}

#[tokio::test]
async fn blast_radius_follows_the_dag_forward() {
    for s in servers().await {
        seed_figure(&s, "wf-fig").await;
        let (status, br) = s.get_json("/v1/ects/A/blast-radius").await;
        assert_eq!(status, 200, "{}: {br}", s.name);
        assert_eq!(br["root"], "A");
        assert_eq!(br["wid"], "wf-fig");
        let mut nodes: Vec<&str> = br["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(nodes[0], "A", "the root comes first");
        nodes.sort();
        assert_eq!(nodes, ["A", "A1", "B", "B-irr", "B-old", "B1", "B2"]);
        assert_eq!(
            br["agents"],
            json!([
                format!("{AGENT_PREFIX}a"),
                format!("{AGENT_PREFIX}b"),
                format!("{AGENT_PREFIX}c")
            ])
        );
        assert_eq!(br["depth"], 3);
        assert_eq!(br["irreversible"], json!(["B-irr"]));
        let checkpoints = br["checkpoints"].as_array().unwrap();
        let find = |jti: &str| {
            checkpoints
                .iter()
                .find(|c| c["jti"] == jti)
                .unwrap_or_else(|| panic!("{jti} missing: {br}"))
        };
        assert_eq!(checkpoints.len(), 4);
        assert_eq!(find("A")["reversible"], true);
        assert_eq!(find("A")["agent"], format!("{AGENT_PREFIX}a"));
        assert_eq!(
            find("A")["rollback_uri"],
            "http://127.0.0.1:9/.well-known/cascade/rollback"
        );
        assert_eq!(find("A")["expired"], false);
        assert!(find("A")["expires_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(find("B-old")["expired"], true, "iat + 1 s is long past");
        assert_eq!(find("B-irr")["reversible"], false);

        let (_, br) = s.get_json("/v1/ects/B/blast-radius").await;
        let mut nodes: Vec<&str> = br["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        nodes.sort();
        assert_eq!(nodes, ["B", "B-irr", "B-old", "B1", "B2"], "{}", s.name);
        assert_eq!(br["depth"], 1);

        let (_, br) = s.get_json("/v1/ects/A/blast-radius?max_depth=1").await;
        assert_eq!(br["nodes"], json!(["A", "A1"]), "{}", s.name);
        assert_eq!(br["depth"], 1);

        let (status, body) = s.get_json("/v1/ects/nope/blast-radius").await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        let (status, body) = s.get_json("/v1/ects/A/blast-radius?max_depth=-1").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("invalid_request"))
        );
    }
}

#[tokio::test]
async fn workflow_dag_in_json_dot_and_mermaid() {
    for s in servers().await {
        seed_figure(&s, "wf-dag").await;
        let (status, dag) = s.get_json("/v1/workflows/wf-dag/dag").await;
        assert_eq!(status, 200, "{}", s.name);
        assert_eq!(dag["wid"], "wf-dag");
        assert_eq!(dag["nodes"].as_array().unwrap().len(), 7);
        let node = dag["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["jti"] == "A1")
            .unwrap();
        assert_eq!(node["exec_act"], "reconfigure");
        assert_eq!(node["iss"], format!("{AGENT_PREFIX}a"));
        assert!(node["iat"].is_i64());
        let edges = dag["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 6);
        assert!(edges.contains(&json!({"from": "A1", "to": "B"})));

        let r = s
            .client
            .get(s.url("/v1/workflows/wf-dag/dag?format=dot"))
            .bearer_auth(READER_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/vnd.graphviz")
        );
        let dot = r.text().await.unwrap();
        assert!(dot.starts_with("digraph"), "{dot}");
        assert!(dot.contains("\"A1\" -> \"B\""), "{dot}");
        let r = s
            .client
            .get(s.url("/v1/workflows/wf-dag/dag"))
            .header("accept", "text/vnd.graphviz")
            .bearer_auth(READER_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().starts_with("digraph"));
        let r = s
            .client
            .get(s.url("/v1/workflows/wf-dag/dag?format=mermaid"))
            .bearer_auth(READER_TOKEN)
            .send()
            .await
            .unwrap();
        let mermaid = r.text().await.unwrap();
        assert!(mermaid.starts_with("flowchart"), "{mermaid}");
        assert_eq!(mermaid.matches("-->").count(), 6, "{mermaid}");

        let (status, body) = s.get_json("/v1/workflows/nope/dag").await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        let (status, body) = s.get_json("/v1/workflows/wf-dag/dag?format=svg").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("invalid_request"))
        );
    }
}

#[tokio::test]
async fn lists_page_oldest_first() {
    for s in servers().await {
        let mut tokens = Vec::new();
        for w in 0..3 {
            for i in 0..4 {
                let parents: Vec<String> = if i == 0 {
                    vec![]
                } else {
                    vec![format!("w{w}-{}", i - 1)]
                };
                let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                let act = if i == 3 { "checkpoint" } else { "act" };
                let c = if act == "checkpoint" {
                    checkpoint_claims(
                        &format!("ag{i}"),
                        &format!("w{w}-{i}"),
                        &format!("wf-{w}"),
                        &parents,
                    )
                } else {
                    claims(
                        &format!("ag{i}"),
                        &format!("w{w}-{i}"),
                        &format!("wf-{w}"),
                        act,
                        &parents,
                    )
                };
                tokens.push(s.sign(&c));
            }
        }
        for t in &tokens {
            assert_eq!(s.post_token(t).await.status(), 201);
        }
        // Walk ECTs three at a time.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/ects?limit=3&cursor={c}"),
                None => "/v1/ects?limit=3".into(),
            };
            let (status, page) = s.get_json(&path).await;
            assert_eq!(status, 200, "{}: {page}", s.name);
            for item in page["items"].as_array().unwrap() {
                seen.push(item["jti"].as_str().unwrap().to_string());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let expected: Vec<String> = (0..3)
            .flat_map(|w| (0..4).map(move |i| format!("w{w}-{i}")))
            .collect();
        assert_eq!(seen, expected, "{}", s.name);

        let (_, page) = s.get_json("/v1/ects?wid=wf-1&exec_act=checkpoint").await;
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        assert_eq!(page["items"][0]["jti"], "w1-3");
        let (_, page) = s.get_json(&format!("/v1/ects?iss={AGENT_PREFIX}ag0")).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 3);

        let (_, wfs) = s.get_json("/v1/workflows?limit=2").await;
        assert_eq!(wfs["items"].as_array().unwrap().len(), 2);
        assert_eq!(wfs["items"][0]["wid"], "wf-0");
        assert_eq!(wfs["items"][0]["nodes"], 4);
        assert_eq!(wfs["items"][0]["agents"], 4);
        assert_eq!(wfs["items"][0]["checkpoints"], 1);
        assert!(
            wfs["items"][0]["first_seen"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        let next = wfs["next_cursor"].as_str().unwrap().to_string();
        let (_, wfs) = s
            .get_json(&format!("/v1/workflows?limit=2&cursor={next}"))
            .await;
        assert_eq!(wfs["items"][0]["wid"], "wf-2");
        assert!(wfs["next_cursor"].is_null());

        for bad in [
            "/v1/ects?limit=0",
            "/v1/ects?limit=1001",
            "/v1/ects?cursor=%%%",
            "/v1/ects?bogus=1",
        ] {
            let (status, body) = s.get_json(bad).await;
            assert!(status == 422 || status == 400, "{bad}: {status} {body}");
            assert!(body["code"].is_string(), "{bad}: {body}");
        }
    }
}

#[tokio::test]
async fn operations_endpoints() {
    for s in servers().await {
        let (status, body) = s.get_json("/healthz").await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
        let (status, body) = s.get_json("/readyz").await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("ready")),
            "{}",
            s.name
        );

        // Metrics count ingest results by code.
        let token = s.sign(&claims("a", "m-1", "wf-m", "act", &["nope"]));
        assert_eq!(s.post_token(&token).await.status(), 422);
        let metrics = s
            .client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("unwind_ect_ingest_total{result=\"unknown_parent\"}"),
            "{metrics}"
        );
        assert!(
            metrics.contains("unwind_http_request_duration_seconds_bucket"),
            "{metrics}"
        );

        // The coordinator's keys.
        let (_, jwks) = s.get_json("/.well-known/jwks.json").await;
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(jwks["keys"][0]["kty"], "EC");
        assert!(jwks["keys"][0].get("d").is_none(), "private part exposed");

        // Docs page, served without any network access.
        let r = s.client.get(s.url("/docs/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("<html"));

        // Unknown routes and methods are problems too.
        let r = s
            .client
            .get(s.url("/v1/nothing-here"))
            .send()
            .await
            .unwrap();
        assert_problem(r, 404, "not_found", "unknown route").await;
        let r = s
            .client
            .delete(s.url("/v1/ects"))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_problem(r, 405, "method_not_allowed", "wrong method").await;
    }
}

#[tokio::test]
async fn served_openapi_matches_the_checked_in_document() {
    let s = servers().await.into_iter().next().unwrap();
    let (status, served) = s.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/unwind.json");
    let text = std::fs::read_to_string(path).expect(
        "openapi/unwind.json: regenerate with `cargo run -- openapi > openapi/unwind.json`",
    );
    let file: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        served, file,
        "openapi/unwind.json is stale: run `cargo run -- openapi > openapi/unwind.json`"
    );
    for path in [
        "/v1/ects",
        "/v1/ects/{jti}",
        "/v1/workflows",
        "/v1/workflows/{wid}/dag",
        "/v1/ects/{jti}/blast-radius",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            served["paths"].get(path).is_some(),
            "{path} missing from the document"
        );
    }
}
