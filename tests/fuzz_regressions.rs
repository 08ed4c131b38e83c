//! Inputs the fuzz targets (fuzz/) found refused wrongly, kept as tests of the normal suite.

mod common;

use common::agents::request;
use common::server::servers;
use serde_json::{Value, json};
use unwind::api::comment_text;
use unwind::rollback::request::{Requester, RollbackRequest, check_request};

fn body(v: Value) -> RollbackRequest {
    serde_json::from_value(v).unwrap()
}

/// request_bodies: a rollback request whose reason or target holds U+0000 passed the checks,
/// and PostgreSQL then refused the text (500 instead of 422).
#[test]
fn rollback_request_with_nul_is_invalid() {
    let operator = Requester::Operator {
        principal: "operator:o".into(),
    };
    for v in [
        json!({"checkpoint_id": "cp-1", "reason": "a\u{0}b"}),
        json!({"checkpoint_id": "cp\u{0}"}),
        json!({"trigger_ect": "\u{0}"}),
    ] {
        let e = check_request(&body(v.clone()), &operator).unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{v}");
    }
}

/// request_bodies: a decision or resolution comment holding U+0000 reached the store.
#[test]
fn comment_with_nul_is_invalid() {
    let e = comment_text(Some("ok\u{0}".into())).unwrap_err();
    assert_eq!(e.code, "invalid_request");
    assert_eq!(comment_text(None).unwrap(), None);
    let long = "é".repeat(1500);
    assert_eq!(
        comment_text(Some(long)).unwrap().unwrap().chars().count(),
        1000
    );
}

#[tokio::test]
async fn rollback_request_with_nul_is_422_on_every_store() {
    for s in servers().await {
        let r = request(&s, json!({"checkpoint_id": "cp\u{0}", "reason": "x"})).await;
        assert_eq!(r.status(), 422, "{}", s.name);
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_request", "{}: {problem}", s.name);
    }
}

/// A U+0000 in a URL's path or query (`%00`) never reached the store checks: PostgreSQL
/// refuses such text, so lookups by id answered 500. Every such URL is 422 now.
#[tokio::test]
async fn urls_with_nul_are_422_on_every_store() {
    use common::server::OPERATOR_TOKEN;
    for s in servers().await {
        for path in [
            "/v1/ects/a%00b",
            "/v1/ects?wid=a%00b",
            "/v1/rollbacks/urn%3Auuid%3A%00",
            "/v1/rollbacks?wid=%00",
            "/v1/ledger/proof/%00",
            "/v1/ects/%00/blast-radius",
            "/v1/workflows/w%00/dag",
            "/v1/workflows/w%00/export",
            "/v1/ects?cursor=%00",
        ] {
            let r = s
                .client
                .get(s.url(path))
                .bearer_auth(OPERATOR_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 422, "{}: {path}", s.name);
            let problem: Value = r.json().await.unwrap();
            assert_eq!(
                problem["code"], "invalid_request",
                "{}: {path}: {problem}",
                s.name
            );
        }
    }
}
