//! The `unwind` binary as a user runs it: first start on the embedded default, key and token
//! files, configuration errors, graceful shutdown on SIGTERM, and the token tools.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::process::{ServeProcess, assert_success, unwind};
use serde_json::{Value, json};

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_on_the_embedded_default_creates_key_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start(dir.path());
    let printed = &server.printed;
    let data = dir.path().join("unwind-data");
    for file in ["unwind.db", "admin.token"] {
        assert!(
            data.join(file).is_file(),
            "{file} missing; printed:\n{printed}"
        );
    }
    // The signing key is generated into the store, shared by every replica of it.
    assert!(!data.join("coordinator.jwk").exists(), "{printed}");
    assert!(
        printed.contains("coordinator signing key: kept in the store"),
        "{printed}"
    );
    assert!(printed.contains(", created)"), "{printed}");
    assert!(printed.contains("unwind-data/admin.token"), "{printed}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&data.join("admin.token")), 0o600);
    }
    let token = server.admin_token();
    let body = http_get(server.port(), "/v1/workflows", Some(&token));
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let ready = http_get(server.port(), "/readyz", None);
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let kid_before = jwks_kids(server.port());
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(20)).success());

    // A second start reuses the stored key and the token file.
    let mut server = ServeProcess::start(dir.path());
    assert!(!server.printed.contains("created"), "{}", server.printed);
    assert_eq!(jwks_kids(server.port()), kid_before);
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

/// The key ids `/.well-known/jwks.json` lists.
fn jwks_kids(port: u16) -> Vec<String> {
    let answer = http_get(port, "/.well-known/jwks.json", None);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let jwks: Value = serde_json::from_str(body).unwrap();
    let kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids.len(), 1, "{jwks}");
    kids
}

/// A plain HTTP/1.1 GET over a socket; returns the whole answer.
fn http_get(port: u16, path: &str, token: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start(dir.path());
    let port = server.port();
    let token = server.admin_token();

    // Start a request and leave its body unfinished, so it is in flight when SIGTERM arrives.
    let body = br#"{"tokens": []}"#;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/ects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..5]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.is_running(), "exited with a request in flight");
    s.write_all(&body[5..]).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"results":[]}"#), "{answer}");
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn invalid_configuration_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[ect]\nalgorithms = [\"HS256\"]\n",
    )
    .unwrap();
    let out = unwind()
        .args(["serve", "--config", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ect.algorithms") && err.contains("HS256"),
        "{err}"
    );

    let out = unwind()
        .args(["serve"])
        .env("UNWIND_ROLLBACK__LEASE_S", "soon")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rollback.lease_s"), "{err}");
    assert!(
        !dir.path().join("unwind-data").exists(),
        "nothing is created for a bad configuration"
    );
}

#[test]
fn keys_generate_then_sign_verify_decode() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for alg in ["es256", "eddsa"] {
        let key = format!("{alg}.jwk");
        let jwks = format!("{alg}.jwks.json");
        let out = unwind()
            .args([
                "keys", "generate", "--alg", alg, "--out", &key, "--jwks", &jwks,
            ])
            .current_dir(d)
            .output()
            .unwrap();
        assert_success(&out, alg);
        #[cfg(unix)]
        assert_eq!(mode(&d.join(&key)), 0o600);
        let public: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(&jwks)).unwrap()).unwrap();
        assert!(
            public["keys"][0].get("d").is_none(),
            "private part in the JWKS"
        );

        let claims = json!({
            "iss": "spiffe://example.com/agent/a", "aud": "spiffe://unwind.local/coordinator",
            "wid": "wf-cli", "exec_act": "checkpoint", "par": [],
            "ext": {"cascade.reversible": true, "cascade.rollback_uri": "https://agent.example/rb"}
        });
        std::fs::write(d.join("claims.json"), claims.to_string()).unwrap();
        let out = unwind()
            .args(["ect", "sign", "--key", &key, "--claims", "claims.json"])
            .current_dir(d)
            .output()
            .unwrap();
        assert_success(&out, alg);
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(token.split('.').count(), 3);
        std::fs::write(d.join("t.jwt"), &token).unwrap();

        let out = unwind()
            .args(["ect", "decode", "t.jwt"])
            .current_dir(d)
            .output()
            .unwrap();
        let decoded: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(decoded["header"]["typ"], "wimse-exec+jwt");
        assert_eq!(decoded["claims"]["exec_act"], "checkpoint");
        assert!(decoded["claims"]["jti"].is_string(), "jti filled in");
        assert!(
            decoded["claims"]["exp"].as_i64().unwrap() > decoded["claims"]["iat"].as_i64().unwrap()
        );

        let out = unwind()
            .args(["ect", "verify", "--jwks", &jwks, "t.jwt"])
            .current_dir(d)
            .output()
            .unwrap();
        assert_success(&out, alg);
        let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(verified["valid"], true);

        // A tampered token is refused with exit code 1 and the code named.
        let parts: Vec<&str> = token.split('.').collect();
        // Same length, other bytes: the signature no longer matches.
        let first = if parts[2].starts_with('A') { "B" } else { "A" };
        let forged = format!("{}.{}.{first}{}", parts[0], parts[1], &parts[2][1..]);
        let out = unwind()
            .args(["ect", "verify", "--jwks", &jwks, &forged])
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_signature"));
        // The rollback host policy applies when given.
        let out = unwind()
            .args([
                "ect",
                "verify",
                "--jwks",
                &jwks,
                "--rollback-host",
                "other.example",
                "t.jwt",
            ])
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("rollback_uri_not_allowed"));
    }
    // Draft -01 typ, read from standard input.
    let mut child = unwind()
        .args([
            "ect",
            "sign",
            "--key",
            "es256.jwk",
            "--claims",
            "-",
            "--profile",
            "draft-01",
        ])
        .current_dir(d)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"iss":"x","aud":"y","exec_act":"a","pred":[]}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    let out = unwind()
        .args(["ect", "decode", token.trim()])
        .output()
        .unwrap();
    let decoded: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decoded["header"]["typ"], "exec+jwt");

    // Usage errors exit 2.
    let out = unwind()
        .args([
            "ect",
            "sign",
            "--key",
            "missing.jwk",
            "--claims",
            "claims.json",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn with_migrate_on_start_off_serve_needs_unwind_migrate_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = unwind()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("UNWIND_MIGRATE_ON_START", "false")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "refused to start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not migrated") && err.contains("unwind migrate"),
        "the message says what to do: {err}"
    );

    let out = unwind()
        .arg("migrate")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Migrated: it starts and is ready without migrating.
    let config = dir.path().join("unwind.toml");
    std::fs::write(&config, "migrate_on_start = false\n").unwrap();
    let mut s = ServeProcess::start_with_config(dir.path(), &config);
    assert!(
        http_get(s.port(), "/readyz", None).starts_with("HTTP/1.1 200"),
        "ready"
    );
    s.sigkill();
}
