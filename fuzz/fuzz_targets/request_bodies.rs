//! The API's JSON request bodies, read as the handlers read them: the rollback request, the
//! decision and the escalation resolution through the `ApiJson` extractor, the batch ingest
//! body through `parse_batch`; then the checks that need no store.
//!
//! The console's form bodies are read too, for the page a form sends the browser to afterwards
//! (`next` after signing in, `back` after a decision).
//!
//! Input: the first byte chooses the body, the rest is the body.
//!
//! Properties: no panic; every refusal is a problem with a 4xx status and a documented code,
//! `malformed` only for what is not JSON; an accepted rollback request has a canonical id,
//! exactly its one target, the caller's rules applied, and only text the store can hold. A
//! return path is followed only when it is a console path of printable ASCII without `//`, a
//! backslash or dot segments, and answering with it never panics.
#![no_main]

use axum::body::Body;
use axum::extract::{Form, FromRequest};
use axum::http::{HeaderValue, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use unwind::api::ApiJson;
use unwind::api::ects::parse_batch;
use unwind::api::escalations::ResolveRequest;
use unwind::api::rollbacks::DecisionRequest;
use unwind::api::{ApiError, comment_text};
use unwind::config::LimitsConfig;
use unwind::rollback::model::OnCannotPrepare;
use unwind::rollback::planner::{Scope, Target};
use unwind::rollback::request::{
    CheckedRequest, Requester, RollbackRequest, canonical_rollback_id, check_request,
};
use unwind_fuzz::{NOW, assert_rejection, block_on, interop_verifier};

/// Codes a body can be refused with before any store is asked.
const BODY_CODES: &[&str] = &[
    "malformed",
    "invalid_request",
    "too_large",
    "unsupported_media_type",
];

fn extract<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let request = Request::builder()
        .method("POST")
        .uri("/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    block_on(ApiJson::<T>::from_request(request, &())).map(|ApiJson(t)| t)
}

fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok()
}

fn assert_problem(e: &ApiError, body: &[u8]) {
    assert!(
        BODY_CODES.contains(&e.code),
        "code {} ({})",
        e.code,
        e.detail
    );
    assert!(e.status.is_client_error(), "{} for {}", e.status, e.code);
    assert!(!e.detail.is_empty());
    // The converse of "not JSON is never accepted" holds only in part: serde_json reports an
    // array read as a struct (`[..]`) or an enum (`{"decision": []}`) as a syntax error, so such
    // JSON is answered `malformed`. Any other JSON object is never `malformed`.
    if e.code == "malformed"
        && let Ok(serde_json::Value::Object(_)) = serde_json::from_slice(body)
    {
        assert!(
            e.detail.contains("expected value"),
            "JSON refused as malformed: {}",
            e.detail
        );
    }
}

/// Text the store cannot hold (PostgreSQL refuses U+0000 in text).
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

fn check_rollback(request: &RollbackRequest) {
    let operator = Requester::Operator {
        principal: "operator:fuzz".into(),
    };
    let agent = Requester::Agent {
        iss: "spiffe://interop.example/agent/es".into(),
        context_wids: vec![Some("wf-1".into())],
    };
    let as_operator = check_request(request, &operator);
    let as_agent = check_request(request, &agent);
    match &as_operator {
        Err(e) => assert_eq!(e.code(), "invalid_request", "{e}"),
        Ok(checked) => check_accepted(request, checked),
    }
    match &as_agent {
        Err(e) => assert!(
            ["invalid_request", "forbidden"].contains(&e.code()),
            "{}: {e}",
            e.code()
        ),
        Ok(checked) => {
            check_accepted(request, checked);
            assert_ne!(checked.scope, Scope::FullWorkflow);
            assert_eq!(checked.on_cannot_prepare, OnCannotPrepare::Auto);
            // An agent may ask for nothing an operator may not.
            assert!(as_operator.is_ok());
        }
    }
}

fn check_accepted(request: &RollbackRequest, checked: &CheckedRequest) {
    assert_eq!(
        canonical_rollback_id(&checked.rollback_id).as_ref(),
        Ok(&checked.rollback_id)
    );
    if let Some(id) = &request.rollback_id {
        assert_eq!(id, &checked.rollback_id);
    }
    match (
        &checked.target,
        &request.checkpoint_id,
        &request.trigger_ect,
    ) {
        (Target::Checkpoint(c), Some(given), None) => assert_eq!(c, given),
        (Target::Trigger(t), None, Some(given)) => assert_eq!(t, given),
        other => panic!("target does not match the request: {other:?}"),
    }
    assert_eq!(checked.scope, request.scope.unwrap_or_default());
    assert_eq!(
        checked.on_cannot_prepare,
        request.on_cannot_prepare.unwrap_or_default()
    );
    assert_eq!(checked.reason, request.reason);
    if let Some(reason) = &checked.reason {
        assert!(reason.chars().count() <= 1000);
        assert!(storable(reason), "reason with U+0000 accepted");
    }
    assert!(
        storable(checked.target.jti()),
        "target with U+0000 accepted"
    );
}

/// A comment is kept shortened, or refused as `invalid_request`; what is kept can be stored.
fn check_comment(comment: Option<String>) {
    match comment_text(comment.clone()) {
        Err(e) => assert_eq!(e.code, "invalid_request"),
        Ok(None) => assert!(comment.is_none()),
        Ok(Some(kept)) => {
            assert!(kept.chars().count() <= 1000);
            assert!(comment.is_some_and(|c| c.starts_with(&kept)));
            assert!(storable(&kept), "comment with U+0000 accepted");
        }
    }
}

/// The values of a console form (`application/x-www-form-urlencoded`), read as the console
/// reads them, and the body itself taken as one value.
fn form_values(body: &[u8]) -> Vec<String> {
    let request = Request::builder()
        .method("POST")
        .uri("/")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let mut values = vec![String::from_utf8_lossy(body).into_owned()];
    if let Ok(Form(pairs)) = block_on(Form::<Vec<(String, String)>>::from_request(request, &())) {
        values.extend(pairs.into_iter().map(|(_, v)| v));
    }
    values
}

fn check_return_path(raw: &str) {
    if let Some(path) = unwind::ui::console_path(raw) {
        assert_eq!(path, raw);
        assert!(path.starts_with("/ui/"), "{path:?}");
        assert!(
            path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'),
            "{path:?}"
        );
        let route = path.split(['?', '#']).next().unwrap_or(path);
        assert!(!route.contains("//"), "{path:?}");
        assert!(!route.split('/').any(|s| s == "." || s == ".."), "{path:?}");
        assert!(HeaderValue::from_str(path).is_ok(), "{path:?}");
    }
    let answer = unwind::ui::see_other(raw);
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let location = answer.headers()[header::LOCATION].as_bytes();
    assert!(location == raw.as_bytes() || location == b"/ui/workflows");
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => match extract::<RollbackRequest>(body) {
            Err(e) => assert_problem(&e, body),
            Ok(request) => {
                assert!(is_json(body));
                check_rollback(&request)
            }
        },
        1 => match extract::<DecisionRequest>(body) {
            Err(e) => assert_problem(&e, body),
            Ok(decision) => check_comment(decision.comment),
        },
        2 => match extract::<ResolveRequest>(body) {
            Err(e) => assert_problem(&e, body),
            Ok(resolve) => check_comment(resolve.comment),
        },
        4 => {
            for value in form_values(body) {
                check_return_path(&value);
            }
        }
        _ => {
            let max = LimitsConfig::default().max_batch_tokens;
            match parse_batch(body, max) {
                Err(e) => assert_problem(&e, body),
                Ok(tokens) => {
                    assert!(tokens.len() <= max);
                    for t in &tokens {
                        if let Err(r) = block_on(interop_verifier().verify(t, NOW)) {
                            assert_rejection(&r, &[]);
                        }
                    }
                }
            }
        }
    }
});
