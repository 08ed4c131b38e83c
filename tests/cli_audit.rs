//! `unwind export`, `unwind verify` and `unwind dag` as an operator runs them: a real `unwind
//! serve` process on each back end, real agents, a real rollback, and the `unwind` binary;
//! then the export tampered with in the ways an audit must catch. Also: every command's help
//! carries an example.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::CommandFactory;
use common::agents::Figure;
use common::process::{COORDINATOR_ID, CliOutput, ServeOptions, ServeSetup, run_cli, unwind};
use common::server::{AGENT_PREFIX, OPERATOR_TOKEN, claims};
use common::{DbKind, test_kinds};
use serde_json::{Map, Value, json};
use unwind::ect::{KeyAlg, Profile, SigningKey};
use unwind_agent::reference::{Behaviour, Controls, ReferenceHandler};

/// The exit code `unwind verify` documents for findings.
const FINDINGS: Option<i32> = Some(4);

/// `unwind verify <file> [more]`, offline: no URL, no token.
async fn verify(file: &Path, more: &[&str]) -> CliOutput {
    let mut c = unwind();
    c.arg("verify").arg(file).args(more);
    run_cli(c).await
}

/// The lines of a text report that name `check` and `jti`.
fn findings<'a>(out: &'a CliOutput, check: &str, jti: &str) -> Vec<&'a str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{check}  {jti}  ")))
        .collect()
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// The export with the token `jti` changed by `f` (or removed when `f` answers `None`).
fn tampered(export: &Value, jti: &str, f: impl Fn(&str) -> Option<String>) -> Value {
    let mut copy = export.clone();
    let tokens = copy["tokens"].as_array_mut().unwrap();
    let i = tokens
        .iter()
        .position(|t| t["jti"] == jti)
        .unwrap_or_else(|| panic!("{jti} not in the export"));
    match f(tokens[i]["token"].as_str().unwrap()) {
        Some(token) => tokens[i]["token"] = json!(token),
        None => {
            tokens.remove(i);
        }
    }
    copy
}

/// One signature byte changed: the first character of the third part, which carries whole
/// bits of the first byte.
fn flip_signature(token: &str) -> Option<String> {
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    Some(format!("{signed}.{first}{}", &sig[1..]))
}

fn short(jti: &str) -> String {
    format!("{}…", &jti[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_workflow_exports_verifies_and_tampering_is_found() {
    for kind in test_kinds() {
        audit_on(kind).await;
    }
}

async fn audit_on(kind: DbKind) {
    let setup = ServeSetup::new(ServeOptions {
        database: Some(kind),
        ..ServeOptions::default()
    })
    .await;
    let s = setup.start("one").await;
    let dir = setup.dir.path();
    let agent = |name: &'static str| {
        let handler = Arc::new(ReferenceHandler::new(Controls::new(Behaviour::default())));
        setup.start_agent(&s, name, handler, ())
    };
    let (a, b) = (agent("a").await, agent("b").await);
    let wid = uuid::Uuid::new_v4().to_string();
    let Figure {
        cp_a,
        a1,
        cp_b,
        b1,
        b2,
        ..
    } = s.seed_figure(&a, &b, &wid).await;
    // A node with two parents, for the tree's "(above)" reference.
    let (join, join_token) = b.action(&wid, "merge_reports", &[b1.clone(), b2.clone()]);
    let (status, body) = s.post("/v1/ects", json!({ "tokens": [join_token] })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "created", "{body}");

    let done = s
        .cli(
            dir,
            &[
                "rollback",
                "create",
                "--checkpoint",
                &cp_a,
                "--reason",
                "audit",
                "--watch",
                "--output",
                "json",
            ],
        )
        .await
        .ok();
    let last: Value = serde_json::from_str(done.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "completed", "{}", done.stdout);
    let rollback = s
        .get(&format!(
            "/v1/rollbacks/{}",
            last["rollback_id"].as_str().unwrap()
        ))
        .await;
    let start = rollback["evidence"]["rollback_start"]
        .as_str()
        .unwrap()
        .to_string();
    let complete = rollback["evidence"]["rollback_complete"]
        .as_str()
        .unwrap()
        .to_string();

    // Export, to a file and to stdout: the same workflow, every token, the rollback, keys.
    let file = dir.join("export.json");
    let written = s
        .cli(
            dir,
            &["export", "--wid", &wid, "--out", file.to_str().unwrap()],
        )
        .await
        .ok();
    assert!(written.stderr.contains("export.json"), "{}", written.stderr);
    let export: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let streamed: Value =
        serde_json::from_str(&s.cli(dir, &["export", "--wid", &wid]).await.ok().stdout).unwrap();
    assert_eq!(streamed["tokens"], export["tokens"]);
    assert_eq!(export["format"], "unwind-export/1");
    assert_eq!(export["wid"], wid.as_str());
    assert_eq!(export["coordinator_id"], COORDINATOR_ID);
    let jtis: Vec<&str> = export["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["jti"].as_str().unwrap())
        .collect();
    // Ledger order: the figure as ingested, then the join, then the evidence.
    assert_eq!(
        &jtis[..6],
        &[&cp_a, &a1, &cp_b, &b1, &b2, &join],
        "{jtis:?}"
    );
    for jti in [&start, &complete] {
        assert!(jtis.contains(&jti.as_str()), "{jti} missing: {jtis:?}");
    }
    assert_eq!(export["rollbacks"].as_array().unwrap().len(), 1, "{export}");
    assert_eq!(export["rollbacks"][0]["status"], "completed");
    assert_eq!(export["rollbacks"][0]["steps"].as_array().unwrap().len(), 2);
    assert!(
        export["keys"]["keys"].as_array().unwrap().len() >= 2,
        "{export}"
    );

    // The untouched export verifies, with its own keys (and says so) and with keys obtained
    // independently: the coordinator's served JWKS and the agents' JWKS file.
    let clean = verify(&file, &[]).await;
    assert_eq!(clean.code, Some(0), "{}\n{}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains("no findings"), "{}", clean.stdout);
    assert!(
        clean.stdout.contains("keys in the file itself"),
        "{}",
        clean.stdout
    );
    let served: Value = reqwest::get(s.url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agents: Value =
        serde_json::from_slice(&std::fs::read(dir.join("agents.jwks.json")).unwrap()).unwrap();
    let mut independent = served["keys"].as_array().unwrap().clone();
    independent.extend(agents["keys"].as_array().unwrap().iter().cloned());
    let jwks = dir.join("independent.jwks.json");
    write_json(&jwks, &json!({ "keys": independent }));
    let clean = verify(&file, &["--jwks", jwks.to_str().unwrap()]).await;
    assert_eq!(clean.code, Some(0), "{}\n{}", clean.stdout, clean.stderr);
    assert!(!clean.stdout.contains("file itself"), "{}", clean.stdout);
    let report: Value =
        serde_json::from_str(&verify(&file, &["--output", "json"]).await.ok().stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["keys"], "file", "{report}");
    assert_eq!(report["tokens"], jtis.len(), "{report}");

    // One signature byte changed.
    let bad = dir.join("bad-signature.json");
    write_json(&bad, &tampered(&export, &cp_b, flip_signature));
    let out = verify(&bad, &[]).await;
    assert_eq!(out.code, FINDINGS, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        findings(&out, "signature", &cp_b).len(),
        1,
        "{}",
        out.stdout
    );
    // The changed bytes no longer hash to the ledger's chain entry either.
    assert_eq!(findings(&out, "chain", &cp_b).len(), 1, "{}", out.stdout);
    assert!(out.stdout.contains("2 findings"), "{}", out.stdout);

    // A parent removed: its child names it.
    let bad = dir.join("no-parent.json");
    write_json(&bad, &tampered(&export, &a1, |_| None));
    let out = verify(&bad, &["--output", "json"]).await;
    assert_eq!(out.code, FINDINGS, "{}\n{}", out.stdout, out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let found = report["findings"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{report}");
    assert_eq!(found[0]["check"], "parents");
    assert_eq!(found[0]["jti"], cp_b.as_str());
    assert!(
        found[0]["detail"].as_str().unwrap().contains(&a1),
        "{report}"
    );

    // The rollback_complete removed: the evidence check names it.
    let bad = dir.join("no-complete.json");
    write_json(&bad, &tampered(&export, &complete, |_| None));
    let out = verify(&bad, &[]).await;
    assert_eq!(out.code, FINDINGS, "{}\n{}", out.stdout, out.stderr);
    let lines = findings(&out, "evidence", &complete);
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert!(lines[0].contains("missing"), "{}", out.stdout);

    // Keys that are not the signers': every token is named.
    let stranger = SigningKey::generate(KeyAlg::ES256).unwrap();
    let wrong = dir.join("wrong.jwks.json");
    write_json(
        &wrong,
        &serde_json::to_value(stranger.public_jwks()).unwrap(),
    );
    let out = verify(&file, &["--jwks", wrong.to_str().unwrap()]).await;
    assert_eq!(out.code, FINDINGS, "{}\n{}", out.stdout, out.stderr);
    for jti in &jtis {
        let lines = findings(&out, "signature", jti);
        assert_eq!(lines.len(), 1, "{jti}: {}", out.stdout);
        assert!(lines[0].contains("--jwks"), "{}", lines[0]);
    }

    // The tree: roots first, children indented under their parent in ledger order, the join
    // printed once in full and referred to under its second parent; each agent's record of its
    // restore under its checkpoint, Unwind's evidence under the checkpoint rolled back to.
    let tree = s.cli(dir, &["dag", "--wid", &wid]).await.ok().stdout;
    let lines: Vec<&str> = tree.lines().collect();
    let a = format!("{AGENT_PREFIX}a");
    let b = format!("{AGENT_PREFIX}b");
    let want = [
        format!("workflow {wid}: {} nodes, 1 roots", jtis.len()),
        format!("checkpoint  {a}  {}  [checkpoint]", short(&cp_a)),
        format!("├── reconfigure_router  {a}  {}", short(&a1)),
        format!("│   └── checkpoint  {b}  {}  [checkpoint]", short(&cp_b)),
        format!("│       ├── update_dns  {b}  {}", short(&b1)),
        format!("│       │   └── merge_reports  {b}  {}", short(&join)),
        format!("│       ├── notify  {b}  {}", short(&b2)),
        format!("│       │   └── ↗ {} (above)", short(&join)),
        format!("│       └── rollback_complete  {b}  "),
        format!("├── rollback_start  {COORDINATOR_ID}  {}", short(&start)),
        format!(
            "│   └── rollback_complete  {COORDINATOR_ID}  {}",
            short(&complete)
        ),
        format!("└── rollback_complete  {a}  "),
    ];
    assert_eq!(lines.len(), want.len(), "{tree}");
    for (line, want) in lines.iter().zip(&want) {
        // The agents' own records have jtis the test does not know: their prefix must match.
        let matches = if want.ends_with("  ") {
            line.starts_with(want.as_str())
        } else {
            line == want
        };
        assert!(matches, "want {want:?}, got {line:?} in\n{tree}");
    }
    let dot = s
        .cli(dir, &["dag", "--wid", &wid, "--format", "dot"])
        .await
        .ok()
        .stdout;
    assert!(dot.starts_with("digraph") && dot.contains(&cp_a), "{dot}");
    let mermaid = s
        .cli(dir, &["dag", "--wid", &wid, "--format", "mermaid"])
        .await
        .ok()
        .stdout;
    assert!(mermaid.starts_with("flowchart TD"), "{mermaid}");
    let json_dag: Value = serde_json::from_str(
        &s.cli(dir, &["dag", "--wid", &wid, "--output", "json"])
            .await
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(json_dag["nodes"].as_array().unwrap().len(), jtis.len());

    // An unknown workflow is the API's not_found, exit 1, for both commands.
    for args in [
        vec!["export", "--wid", "no-such-workflow"],
        vec!["dag", "--wid", "no-such-workflow"],
    ] {
        let out = s.cli(dir, &args).await;
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("not_found"), "{args:?}: {}", out.stderr);
    }
    let unknown = reqwest::Client::new()
        .get(s.url("/v1/workflows/no-such-workflow/export"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let anonymous = reqwest::get(s.url(&format!("/v1/workflows/{wid}/export")))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn a_file_that_is_not_an_export_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (dir.path().join("missing.json"), "cannot be read"),
        (dir.path().join("truncated.json"), "not an Unwind export"),
        (
            dir.path().join("other-format.json"),
            "expected `unwind-export/1`",
        ),
        (dir.path().join("no-tokens.json"), "missing field `tokens`"),
    ];
    std::fs::write(&cases[1].0, r#"{"format":"unwind-export/1","tokens":["#).unwrap();
    write_json(
        &cases[2].0,
        &json!({"format": "other/9", "wid": "w", "coordinator_id": "c", "keys": {"keys": []}, "tokens": []}),
    );
    write_json(
        &cases[3].0,
        &json!({"format": "unwind-export/1", "wid": "w", "coordinator_id": "c", "keys": {"keys": []}}),
    );
    for (path, message) in &cases {
        let out = verify(path, &[]).await;
        assert_eq!(out.code, Some(2), "{}: {}", path.display(), out.stderr);
        assert!(
            out.stderr.contains(message),
            "{}: {}",
            path.display(),
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    // A JWKS that is not one is a usage error too.
    let export = dir.path().join("empty.json");
    write_json(
        &export,
        &json!({"format": "unwind-export/1", "wid": "w", "coordinator_id": "c", "keys": {"keys": []}, "tokens": []}),
    );
    assert_eq!(verify(&export, &[]).await.code, Some(0));
    let out = verify(&export, &["--jwks", cases[1].0.to_str().unwrap()]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("not a JWKS"), "{}", out.stderr);
}

/// The DAG and key rules on a hand-made export (tokens a ledger would never accept): every
/// finding is expected, nothing else is reported, and a long-expired token is not one.
#[tokio::test]
async fn dag_rules_and_the_coordinator_key_are_checked_offline() {
    let agent = SigningKey::generate(KeyAlg::ES256).unwrap();
    let coordinator = SigningKey::generate(KeyAlg::ES256).unwrap();
    let impostor = SigningKey::generate(KeyAlg::ES256).unwrap();
    let wid = "wf-offline";
    let sign =
        |key: &SigningKey, jti: &str, parents: &[&str], edit: &dyn Fn(&mut Map<String, Value>)| {
            let mut c = claims("a", jti, wid, "step", parents);
            edit(&mut c);
            key.sign_ect(&c, Profile::Draft00).unwrap()
        };
    let keep = |_: &mut Map<String, Value>| {};
    let as_coordinator = |c: &mut Map<String, Value>| {
        c.insert("iss".into(), json!(COORDINATOR_ID));
    };
    let iat = common::server::now();
    let tokens = [
        // Expired long ago: an old export must still verify.
        (
            "root",
            sign(&agent, "root", &[], &|c| {
                c.insert("iat".into(), json!(1_000));
                c.insert("exp".into(), json!(2_000));
            }),
        ),
        ("root", sign(&agent, "root", &[], &keep)),
        (
            "late",
            sign(&agent, "late", &["root"], &|c| {
                c.insert("iat".into(), json!(iat));
            }),
        ),
        (
            "early",
            sign(&agent, "early", &["late"], &|c| {
                c.insert("iat".into(), json!(iat - 3600));
            }),
        ),
        ("c1", sign(&agent, "c1", &["c2"], &keep)),
        ("c2", sign(&agent, "c2", &["c1"], &keep)),
        (
            "stray",
            sign(&agent, "stray", &[], &|c| {
                c.insert("wid".into(), json!("another-workflow"));
            }),
        ),
        ("own", sign(&coordinator, "own", &["root"], &as_coordinator)),
        (
            "forged",
            sign(&impostor, "forged", &["root"], &as_coordinator),
        ),
    ];
    let keys: Vec<Value> = [&agent, &coordinator, &impostor]
        .iter()
        .map(|k| serde_json::to_value(k.public_jwk()).unwrap())
        .collect();
    let export = json!({
        "format": "unwind-export/1",
        "wid": wid,
        "exported_at": "2026-12-01T00:00:00Z",
        "coordinator_id": COORDINATOR_ID,
        "keys": {"keys": keys},
        "issuers": [
            {"id": COORDINATOR_ID, "kids": [coordinator.kid()]},
            {"id": format!("{AGENT_PREFIX}*"), "kids": [agent.kid(), impostor.kid()]},
        ],
        "rollbacks": [],
        "tokens": tokens.iter().map(|(jti, token)| json!({"jti": jti, "token": token, "received_at": "2026-12-01T00:00:00Z"})).collect::<Vec<_>>(),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hand-made.json");
    write_json(&file, &export);
    let out = verify(&file, &["--output", "json"]).await;
    assert_eq!(out.code, FINDINGS, "{}\n{}", out.stdout, out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut found: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap().into(),
                f["jti"].as_str().unwrap().into(),
            )
        })
        .collect();
    found.sort();
    let mut want: Vec<(String, String)> = [
        ("acyclic", "c1"),
        ("acyclic", "c2"),
        ("claims", "stray"),
        ("coordinator", "forged"),
        ("parent_order", "early"),
        ("unique_jti", "root"),
    ]
    .iter()
    .map(|(c, j)| (c.to_string(), j.to_string()))
    .collect();
    want.sort();
    assert_eq!(found, want, "{report}");
}

/// Every leaf command's long help shows an `Example:` line.
#[test]
fn every_command_has_an_example_in_its_help() {
    fn walk(
        cmd: &clap::Command,
        path: String,
        leaves: &mut Vec<String>,
        missing: &mut Vec<String>,
    ) {
        let subs: Vec<&clap::Command> = cmd
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .collect();
        if subs.is_empty() {
            let help = cmd.clone().render_long_help().to_string();
            if !help
                .lines()
                .any(|l| l.trim_start().starts_with("Example: unwind "))
            {
                missing.push(path.clone());
            }
            leaves.push(path);
            return;
        }
        for sub in subs {
            walk(sub, format!("{path} {}", sub.get_name()), leaves, missing);
        }
    }
    let mut root = unwind::cli::Cli::command();
    root.build();
    let (mut leaves, mut missing) = (Vec::new(), Vec::new());
    walk(&root, "unwind".into(), &mut leaves, &mut missing);
    assert!(
        missing.is_empty(),
        "no `Example: unwind …` line in the help of {missing:?}"
    );
    for expected in [
        "unwind verify",
        "unwind export",
        "unwind dag",
        "unwind rollback watch",
        "unwind keys generate",
    ] {
        assert!(
            leaves.iter().any(|l| l == expected),
            "{expected} not walked: {leaves:?}"
        );
    }
}
