//! `POST /v1/ects` over HTTP against SQLite and PostgreSQL: every refusal of api.md's ingest
//! row (status, `code`, nothing stored), duplicates, batches and their ordering, auth.

mod common;

use common::server::*;
use common::tokens::*;
use serde_json::{Value, json};

/// A refusal case: the token to send, the status and code it must get.
struct Case {
    name: &'static str,
    token: String,
    status: u16,
    code: &'static str,
    /// The jti that must not be stored afterwards.
    jti: Option<String>,
}

#[tokio::test]
async fn every_refusal_has_its_status_and_code_and_stores_nothing() {
    for s in servers().await {
        let wid = "wf-refusals";
        let other_wid = "wf-other";
        let key = &s.agent_key;
        let now = now();
        // Parents the cases refer to.
        let root = s.sign(&claims("a", "root-1", wid, "plan", &[]));
        let foreign = s.sign(&claims("a", "foreign-1", other_wid, "plan", &[]));
        let mut late = claims("a", "late-parent", wid, "plan", &[]);
        late.insert("iat".into(), json!(now - 5));
        let late = s.sign(&late);
        s.ingest_ok(&[root, foreign, late]).await;

        let valid = |jti: &str| Value::Object(claims("a", jti, wid, "act", &["root-1"]));
        let with = |jti: &str, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            let mut c = claims("a", jti, wid, "act", &["root-1"]);
            f(&mut c);
            s.sign(&c)
        };
        let mut cases = vec![
            Case {
                name: "alg none",
                token: format!(
                    "{}.{}.{}",
                    b64_json(&json!({"alg":"none","typ":"wimse-exec+jwt","kid":key.kid()})),
                    b64_json(&valid("c-none")),
                    b64(b"sig")
                ),
                status: 422,
                code: "alg_not_allowed",
                jti: Some("c-none".into()),
            },
            Case {
                name: "HS256 with the issuer's public key as the secret",
                token: {
                    let header = json!({"alg":"HS256","typ":"wimse-exec+jwt","kid":key.kid()});
                    let input = format!("{}.{}", b64_json(&header), b64_json(&valid("c-hs256")));
                    let secret = serde_json::to_vec(&key.public_jwks()).unwrap();
                    let sig = jsonwebtoken::crypto::sign(
                        input.as_bytes(),
                        &jsonwebtoken::EncodingKey::from_secret(&secret),
                        jsonwebtoken::Algorithm::HS256,
                    )
                    .unwrap();
                    format!("{input}.{sig}")
                },
                status: 422,
                code: "alg_not_allowed",
                jti: Some("c-hs256".into()),
            },
            Case {
                name: "header jku",
                token: sign_raw(
                    key,
                    &json!({"alg":"ES256","typ":"wimse-exec+jwt","kid":key.kid(),"jku":"https://evil.example/jwks"}),
                    &valid("c-jku"),
                ),
                status: 422,
                code: "invalid_header",
                jti: Some("c-jku".into()),
            },
            Case {
                name: "header jwk",
                token: sign_raw(
                    key,
                    &json!({"alg":"ES256","typ":"wimse-exec+jwt","kid":key.kid(),"jwk":{"kty":"EC"}}),
                    &valid("c-jwk"),
                ),
                status: 422,
                code: "invalid_header",
                jti: Some("c-jwk".into()),
            },
            Case {
                name: "wrong typ",
                token: sign_raw(
                    key,
                    &json!({"alg":"ES256","typ":"JWT","kid":key.kid()}),
                    &valid("c-typ"),
                ),
                status: 422,
                code: "invalid_typ",
                jti: Some("c-typ".into()),
            },
            Case {
                name: "unknown issuer",
                token: with("c-iss", &|c| {
                    c.insert("iss".into(), json!("spiffe://evil.example/agent/x"));
                }),
                status: 422,
                code: "unknown_issuer",
                jti: Some("c-iss".into()),
            },
            Case {
                name: "unknown kid",
                token: sign_raw(
                    key,
                    &json!({"alg":"ES256","typ":"wimse-exec+jwt","kid":"no-such-kid"}),
                    &valid("c-kid"),
                ),
                status: 422,
                code: "unknown_key",
                jti: Some("c-kid".into()),
            },
            Case {
                name: "tampered payload",
                token: {
                    let good = s.sign(&claims("a", "c-tamper", wid, "act", &["root-1"]));
                    let parts: Vec<&str> = good.split('.').collect();
                    let mut forged = valid("c-tamper");
                    forged["exec_act"] = json!("approve_payment");
                    format!("{}.{}.{}", parts[0], b64_json(&forged), parts[2])
                },
                status: 422,
                code: "invalid_signature",
                jti: Some("c-tamper".into()),
            },
            Case {
                name: "expired",
                token: with("c-expired", &|c| {
                    c.insert("iat".into(), json!(now - 7200));
                    c.insert("exp".into(), json!(now - 3600));
                    c.insert("par".into(), json!([]));
                }),
                status: 422,
                code: "expired",
                jti: Some("c-expired".into()),
            },
            Case {
                name: "iat in the future",
                token: with("c-future", &|c| {
                    c.insert("iat".into(), json!(now + 600));
                    c.insert("exp".into(), json!(now + 4000));
                }),
                status: 422,
                code: "not_yet_valid",
                jti: Some("c-future".into()),
            },
            Case {
                name: "missing exec_act",
                token: with("c-noact", &|c| {
                    c.remove("exec_act");
                }),
                status: 422,
                code: "invalid_claims",
                jti: Some("c-noact".into()),
            },
            Case {
                name: "iat of the wrong type",
                token: with("c-iattype", &|c| {
                    c.insert("iat".into(), json!("yesterday"));
                }),
                status: 422,
                code: "invalid_claims",
                jti: Some("c-iattype".into()),
            },
            Case {
                name: "missing aud",
                token: with("c-noaud", &|c| {
                    c.remove("aud");
                }),
                status: 422,
                code: "invalid_claims",
                jti: Some("c-noaud".into()),
            },
            Case {
                name: "a NUL character in a claim (PostgreSQL cannot store it)",
                token: with("c-nul", &|c| {
                    c.insert("ext".into(), json!({"note": "a\u{0}b"}));
                }),
                status: 422,
                code: "invalid_claims",
                jti: Some("c-nul".into()),
            },
            Case {
                name: "unknown parent",
                token: with("c-orphan", &|c| {
                    c.insert("par".into(), json!(["never-seen"]));
                }),
                status: 422,
                code: "unknown_parent",
                jti: Some("c-orphan".into()),
            },
            Case {
                name: "parent in another workflow",
                token: with("c-widmix", &|c| {
                    c.insert("par".into(), json!(["foreign-1"]));
                }),
                status: 422,
                code: "wid_mismatch",
                jti: Some("c-widmix".into()),
            },
            Case {
                name: "parent issued after the child",
                token: with("c-early", &|c| {
                    c.insert("iat".into(), json!(now - 1000));
                    c.insert("par".into(), json!(["late-parent"]));
                }),
                status: 422,
                code: "parent_after_child",
                jti: Some("c-early".into()),
            },
            Case {
                name: "both par and pred",
                token: with("c-parpred", &|c| {
                    c.insert("pred".into(), json!(["root-1"]));
                }),
                status: 422,
                code: "invalid_claims",
                jti: Some("c-parpred".into()),
            },
            Case {
                name: "ext over 4096 bytes",
                token: with("c-bigext", &|c| {
                    c.insert("ext".into(), json!({"blob": "x".repeat(4100)}));
                }),
                status: 422,
                code: "invalid_claims",
                jti: Some("c-bigext".into()),
            },
            Case {
                name: "ext deeper than 5",
                token: with("c-deepext", &|c| {
                    c.insert("ext".into(), json!({"a":{"b":{"c":{"d":{"e":{}}}}}}));
                }),
                status: 422,
                code: "invalid_claims",
                jti: Some("c-deepext".into()),
            },
            Case {
                name: "over 100 parents",
                token: with("c-parents", &|c| {
                    c.insert(
                        "par".into(),
                        json!((0..101).map(|i| format!("p{i}")).collect::<Vec<_>>()),
                    );
                }),
                status: 422,
                code: "invalid_claims",
                jti: Some("c-parents".into()),
            },
            Case {
                name: "checkpoint without cascade.reversible",
                token: with("c-cp", &|c| {
                    c.insert("exec_act".into(), json!("checkpoint"));
                    c.insert(
                        "ext".into(),
                        json!({"cascade.rollback_uri": "http://127.0.0.1:9/rb"}),
                    );
                }),
                status: 422,
                code: "invalid_checkpoint",
                jti: Some("c-cp".into()),
            },
            Case {
                name: "rollback_uri on a host the issuer may not name",
                token: with("c-ssrf", &|c| {
                    c.insert("exec_act".into(), json!("checkpoint"));
                    c.insert("ext".into(), json!({"cascade.reversible": true, "cascade.rollback_uri": "http://169.254.169.254/latest/meta-data"}));
                }),
                status: 422,
                code: "rollback_uri_not_allowed",
                jti: Some("c-ssrf".into()),
            },
            Case {
                name: "malformed base64",
                token: "e30.@@@.c2ln".into(),
                status: 400,
                code: "malformed",
                jti: None,
            },
            Case {
                name: "payload not JSON",
                token: format!(
                    "{}.{}.{}",
                    b64_json(&header(key)),
                    b64(b"{not json"),
                    b64(b"sig")
                ),
                status: 400,
                code: "malformed",
                jti: None,
            },
            Case {
                name: "two parts",
                token: format!("{}.{}", b64_json(&header(key)), b64_json(&valid("c-two"))),
                status: 400,
                code: "malformed",
                jti: Some("c-two".into()),
            },
            Case {
                name: "unsigned (L1)",
                token: format!("{}.{}.", b64_json(&header(key)), b64_json(&valid("c-l1"))),
                status: 400,
                code: "malformed",
                jti: Some("c-l1".into()),
            },
            Case {
                name: "duplicate JSON keys",
                token: {
                    let body = format!(
                        r#"{{"iss":"{AGENT_PREFIX}a","iss":"{AGENT_PREFIX}b","aud":"x","iat":{},"exp":{},"jti":"c-dupkey","wid":"{wid}","exec_act":"act","par":[]}}"#,
                        now - 10,
                        now + 100
                    );
                    let input = format!("{}.{}", b64_json(&header(key)), b64(body.as_bytes()));
                    format!("{input}.{}", b64(b"sig"))
                },
                status: 400,
                code: "malformed",
                jti: Some("c-dupkey".into()),
            },
            Case {
                name: "token over 16 KiB",
                token: with("c-huge", &|c| {
                    c.insert("pad".into(), json!("y".repeat(17 * 1024)));
                }),
                status: 400,
                code: "malformed",
                jti: Some("c-huge".into()),
            },
        ];
        // Same jti, other content: needs the first version stored.
        let first = s.sign(&claims("a", "c-conflict", wid, "act", &["root-1"]));
        assert_eq!(s.post_token(&first).await.status(), 201, "{}", s.name);
        cases.push(Case {
            name: "duplicate jti with other content",
            token: s.sign(&claims("a", "c-conflict", wid, "other_act", &["root-1"])),
            status: 409,
            code: "jti_conflict",
            jti: None,
        });

        for case in cases {
            let before = s.count().await;
            let context = format!("{}: {}", s.name, case.name);
            assert_problem(
                s.post_token(&case.token).await,
                case.status,
                case.code,
                &context,
            )
            .await;
            assert_eq!(s.count().await, before, "{context}: something was stored");
            if let Some(jti) = case.jti {
                let (status, _) = s.get_json(&format!("/v1/ects/{jti}")).await;
                assert_eq!(status, 404, "{context}: {jti} is readable");
            }
            // The same token inside a batch is refused with the same code, alone.
            let r = s.post_batch(std::slice::from_ref(&case.token)).await;
            assert_eq!(r.status(), 200, "{context}: batch");
            let body: Value = r.json().await.unwrap();
            assert_eq!(
                body["results"][0]["status"], "rejected",
                "{context}: batch {body}"
            );
            assert_eq!(
                body["results"][0]["error"]["code"], case.code,
                "{context}: batch {body}"
            );
            assert_eq!(s.count().await, before, "{context}: batch stored something");
        }

        // A cycle can only be built inside one batch.
        let a = s.sign(&claims("a", "cyc-a", wid, "act", &["cyc-b"]));
        let b = s.sign(&claims("a", "cyc-b", wid, "act", &["cyc-a"]));
        let ok = s.sign(&claims("a", "cyc-ok", wid, "act", &["root-1"]));
        let body: Value = s.post_batch(&[a, b, ok]).await.json().await.unwrap();
        assert_eq!(
            body["results"][0]["error"]["code"], "cycle",
            "{}: {body}",
            s.name
        );
        assert_eq!(
            body["results"][1]["error"]["code"], "cycle",
            "{}: {body}",
            s.name
        );
        assert_eq!(
            body["results"][2]["status"], "created",
            "{}: {body}",
            s.name
        );
    }
}

#[tokio::test]
async fn size_limits_and_media_types() {
    for s in servers().await {
        let name = s.name;
        // Body over limits.max_body_bytes (1 MiB).
        let big = "x".repeat(1024 * 1024 + 10);
        let r = s
            .client
            .post(s.url("/v1/ects"))
            .bearer_auth(OPERATOR_TOKEN)
            .header("content-type", "application/jwt")
            .body(big)
            .send()
            .await
            .unwrap();
        assert_problem(r, 413, "too_large", name).await;
        // More than 1000 tokens.
        let tokens: Vec<String> = (0..1001).map(|i| format!("t{i}")).collect();
        assert_problem(s.post_batch(&tokens).await, 413, "too_large", name).await;
        // Wrong media type.
        let r = s
            .client
            .post(s.url("/v1/ects"))
            .bearer_auth(OPERATOR_TOKEN)
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_problem(r, 415, "unsupported_media_type", name).await;
        // Batch body that is not JSON.
        let r = s
            .client
            .post(s.url("/v1/ects"))
            .bearer_auth(OPERATOR_TOKEN)
            .header("content-type", "application/json")
            .body("{nope")
            .send()
            .await
            .unwrap();
        assert_problem(r, 400, "malformed", name).await;
        // JSON of the wrong shape.
        let r = s
            .client
            .post(s.url("/v1/ects"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"tokens": "one"}))
            .send()
            .await
            .unwrap();
        assert_problem(r, 422, "invalid_request", name).await;
        assert_eq!(s.count().await, 0, "{name}");
    }
}

#[tokio::test]
async fn single_ingest_created_then_duplicate_and_readable() {
    for s in servers().await {
        let token = s.sign(&checkpoint_claims("router", "cp-1", "wf-1", &[]));
        let r = s.post_token(&token).await;
        assert_eq!(r.status(), 201, "{}", s.name);
        let mut body: Value = r.json().await.unwrap();
        // The receipt is additive (tests/ledger_chain.rs checks it).
        let receipt = body.as_object_mut().unwrap().remove("receipt").unwrap();
        assert_eq!(body, json!({"jti": "cp-1", "status": "created"}));
        let r = s.post_token(&format!("{token}\n")).await;
        assert_eq!(r.status(), 200, "{}", s.name);
        let mut body: Value = r.json().await.unwrap();
        let again = body.as_object_mut().unwrap().remove("receipt").unwrap();
        assert_eq!(body, json!({"jti": "cp-1", "status": "duplicate"}));
        assert_eq!(again["seq"], receipt["seq"], "{}", s.name);
        assert_eq!(again["chain_hash"], receipt["chain_hash"], "{}", s.name);
        assert_eq!(s.count().await, 1);

        let (status, ect) = s.get_json("/v1/ects/cp-1").await;
        assert_eq!(status, 200);
        assert_eq!(ect["jti"], "cp-1");
        assert_eq!(ect["wid"], "wf-1");
        assert_eq!(ect["iss"], format!("{AGENT_PREFIX}router"));
        assert_eq!(ect["exec_act"], "checkpoint");
        assert_eq!(ect["par"], json!([]));
        assert_eq!(ect["token"], token);
        assert_eq!(ect["claims"]["ext"]["cascade.reversible"], true);
        assert!(ect["received_at"].as_str().unwrap().ends_with('Z'));
        assert!(ect["iat"].is_i64());
    }
}

#[tokio::test]
async fn batch_orders_parents_first_and_reports_each_token() {
    for s in servers().await {
        let wid = "wf-batch";
        let root = s.sign(&claims("a", "b-root", wid, "plan", &[]));
        let mid = s.sign(&claims("b", "b-mid", wid, "act", &["b-root"]));
        let leaf = s.sign(&claims("c", "b-leaf", wid, "act", &["b-mid", "b-root"]));
        let bad = s.sign(&claims("c", "b-bad", wid, "act", &["missing"]));
        // Children first, a bad token in the middle, a repeated token at the end.
        let batch = vec![leaf.clone(), bad, mid, root.clone(), root];
        let r = s.post_batch(&batch).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        let results = body["results"].as_array().unwrap();
        let got: Vec<(u64, &str, &str)> = results
            .iter()
            .map(|x| {
                (
                    x["index"].as_u64().unwrap(),
                    x["jti"].as_str().unwrap(),
                    x["status"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "b-leaf", "created"),
                (1, "b-bad", "rejected"),
                (2, "b-mid", "created"),
                (3, "b-root", "created"),
                (4, "b-root", "duplicate")
            ],
            "{}",
            s.name
        );
        assert_eq!(results[1]["error"]["code"], "unknown_parent");
        assert_eq!(s.count().await, 3);
        // Sending it again changes nothing.
        let body: Value = s.post_batch(&batch).await.json().await.unwrap();
        assert_eq!(body["results"][0]["status"], "duplicate");
        assert_eq!(s.count().await, 3);
    }
}

#[tokio::test]
async fn draft_01_tokens_are_normalised() {
    for s in servers().await {
        let root = s.sign(&claims("a", "d1-root", "wf-d1", "plan", &[]));
        s.ingest_ok(&[root]).await;
        let mut c = claims("a", "d1-child", "wf-d1", "act", &[]);
        c.remove("par");
        c.insert("pred".into(), json!(["d1-root"]));
        c.insert("ect_ext".into(), json!({"cascade.error": true}));
        let token = s
            .agent_key
            .sign_ect(&c, unwind::ect::Profile::Draft01)
            .unwrap();
        assert_eq!(s.post_token(&token).await.status(), 201, "{}", s.name);
        let (_, ect) = s.get_json("/v1/ects/d1-child").await;
        assert_eq!(ect["par"], json!(["d1-root"]));
        assert_eq!(ect["ext"]["cascade.error"], true);
        assert_eq!(ect["claims"]["pred"], json!(["d1-root"]));
    }
}

#[tokio::test]
async fn authentication_and_roles() {
    for s in servers().await {
        let token = s.sign(&claims("a", "auth-1", "wf-auth", "plan", &[]));
        let post = |auth: Option<&str>| {
            let mut r = s
                .client
                .post(s.url("/v1/ects"))
                .header("content-type", "application/jwt")
                .body(token.clone());
            if let Some(t) = auth {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        assert_problem(
            post(None).await.unwrap(),
            401,
            "unauthenticated",
            "no token",
        )
        .await;
        assert_problem(
            post(Some("wrong-token")).await.unwrap(),
            401,
            "unauthenticated",
            "unknown token",
        )
        .await;
        assert_problem(
            post(Some(READER_TOKEN)).await.unwrap(),
            403,
            "forbidden",
            "reader posts",
        )
        .await;
        assert_eq!(
            post(Some(&s.admin_token)).await.unwrap().status(),
            201,
            "admin posts"
        );
        // Reads need a token too.
        let r = s.client.get(s.url("/v1/ects/auth-1")).send().await.unwrap();
        assert_problem(r, 401, "unauthenticated", "anonymous read").await;
        // Open endpoints.
        for path in [
            "/healthz",
            "/readyz",
            "/.well-known/jwks.json",
            "/openapi.json",
        ] {
            assert_eq!(
                s.client.get(s.url(path)).send().await.unwrap().status(),
                200,
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn agents_ingest_with_execution_context_which_is_recorded_too() {
    for s in servers().await {
        let wid = "wf-agent";
        let context = s.sign(&claims("planner", "ctx-1", wid, "plan", &[]));
        let body_token = s.sign(&claims("planner", "ctx-2", wid, "act", &["ctx-1"]));
        let r = s
            .client
            .post(s.url("/v1/ects"))
            .header("execution-context", &context)
            .header("content-type", "application/jwt")
            .body(body_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", s.name);
        assert_eq!(
            s.get_json("/v1/ects/ctx-1").await.0,
            200,
            "context token recorded"
        );
        assert_eq!(s.get_json("/v1/ects/ctx-2").await.0, 200);

        // A context token that does not verify.
        let mut forged = claims("planner", "ctx-3", wid, "plan", &[]);
        forged.insert("iss".into(), json!("spiffe://evil.example/x"));
        let bad = s.sign(&forged);
        let r = s
            .client
            .post(s.url("/v1/ects"))
            .header("execution-context", bad)
            .header("content-type", "application/jwt")
            .body("x.y.z")
            .send()
            .await
            .unwrap();
        assert_problem(r, 401, "unauthenticated", "forged context").await;
        // Not addressed to Unwind.
        let mut elsewhere = claims("planner", "ctx-4", wid, "plan", &[]);
        elsewhere.insert("aud".into(), json!("spiffe://someone.else"));
        let r = s
            .client
            .post(s.url("/v1/ects"))
            .header("execution-context", s.sign(&elsewhere))
            .header("content-type", "application/jwt")
            .body("x.y.z")
            .send()
            .await
            .unwrap();
        assert_problem(r, 401, "unauthenticated", "wrong audience").await;
        // Over 16 KiB.
        let huge = "a".repeat(17 * 1024);
        let r = s
            .client
            .post(s.url("/v1/ects"))
            .header("execution-context", huge)
            .header("content-type", "application/jwt")
            .body("x.y.z")
            .send()
            .await
            .unwrap();
        assert_problem(r, 431, "too_large", "huge context").await;
        // Agents cannot read the ledger with a context token.
        let r = s
            .client
            .get(s.url("/v1/ects/ctx-1"))
            .header("execution-context", &context)
            .send()
            .await
            .unwrap();
        assert_problem(r, 403, "forbidden", "agent reads").await;
        assert_eq!(s.count().await, 2);
    }
}

#[tokio::test]
async fn concurrent_overlapping_batches_give_the_serial_ledger() {
    for s in servers().await {
        let wid = "wf-conc";
        // 60 tokens in a chain of 3 layers; 50 clients each send an overlapping window.
        let mut tokens = Vec::new();
        for i in 0..60 {
            let parents: Vec<String> = if i < 20 {
                vec![]
            } else {
                vec![format!("cc-{}", i - 20)]
            };
            let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
            tokens.push(s.sign(&claims(
                &format!("a{}", i % 4),
                &format!("cc-{i}"),
                wid,
                "act",
                &parents,
            )));
        }
        let mut tasks = Vec::new();
        for c in 0..50usize {
            let client = s.client.clone();
            let url = s.url("/v1/ects");
            // Each client sends its window in reverse order, so children often come first.
            let window: Vec<String> = (0..60)
                .filter(|i| (i + c) % 3 != 0)
                .map(|i| tokens[i].clone())
                .rev()
                .collect();
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(OPERATOR_TOKEN)
                    .json(&json!({"tokens": window}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.unwrap()
            }));
        }
        let mut created = 0;
        for t in tasks {
            let body = t.await.unwrap();
            for item in body["results"].as_array().unwrap() {
                match item["status"].as_str().unwrap() {
                    "created" => created += 1,
                    "duplicate" => {}
                    // A child whose parent's window went to another client still in flight.
                    "rejected" => assert_eq!(
                        item["error"]["code"], "unknown_parent",
                        "{}: {item}",
                        s.name
                    ),
                    other => panic!("{other}"),
                }
            }
        }
        // Whatever was missed, a final serial pass completes it: the ledger is the serial one.
        let body: Value = s.post_batch(&tokens).await.json().await.unwrap();
        for item in body["results"].as_array().unwrap() {
            assert_ne!(item["status"], "rejected", "{}: {item}", s.name);
            if item["status"] == "created" {
                created += 1;
            }
        }
        assert_eq!(created, 60, "{}: each token created exactly once", s.name);
        assert_eq!(s.count().await, 60);
        let (_, wf) = s.get_json("/v1/workflows").await;
        assert_eq!(wf["items"][0]["nodes"], 60, "{}", s.name);
        assert_eq!(wf["items"][0]["agents"], 4, "{}", s.name);
    }
}
