//! The `unwind` binary as a user runs it: first start on the embedded default, key and token
//! files, configuration errors, graceful shutdown on SIGTERM, and the token tools.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn unwind() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unwind"));
    // The tests' own environment must not configure the child.
    for (k, _) in std::env::vars() {
        if k.starts_with("UNWIND_") {
            c.env_remove(k);
        }
    }
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `unwind serve` in `dir` and waits for its "listening" line; returns the child and
/// everything it printed up to then.
fn serve(dir: &Path, args: &[&str]) -> (Child, String) {
    let mut child = unwind()
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "unwind serve exited early; printed:\n{printed}");
        printed.push_str(&line);
        if line.contains("listening on") {
            break;
        }
        assert!(Instant::now() < deadline, "no listening line:\n{printed}");
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = reader.read_to_string(&mut sink);
    });
    (child, printed)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("unwind did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_on_the_embedded_default_creates_key_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut child, printed) = serve(dir.path(), &["--listen", &listen]);
    let data = dir.path().join("unwind-data");
    for file in ["unwind.db", "coordinator.jwk", "admin.token"] {
        assert!(
            data.join(file).is_file(),
            "{file} missing; printed:\n{printed}"
        );
    }
    assert!(printed.contains("unwind-data/coordinator.jwk"), "{printed}");
    assert!(printed.contains("unwind-data/admin.token"), "{printed}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&data.join("coordinator.jwk")), 0o600);
        assert_eq!(mode(&data.join("admin.token")), 0o600);
    }
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let body = http_get(port, "/v1/workflows", Some(&token));
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let ready = http_get(port, "/readyz", None);
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());

    // A second start reuses both files.
    let key_before = std::fs::read_to_string(data.join("coordinator.jwk")).unwrap();
    let (mut child, printed) = serve(dir.path(), &["--listen", &listen]);
    assert!(!printed.contains("created"), "{printed}");
    assert_eq!(
        std::fs::read_to_string(data.join("coordinator.jwk")).unwrap(),
        key_before
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
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
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut child, _) = serve(dir.path(), &["--listen", &listen]);
    let token = std::fs::read_to_string(dir.path().join("unwind-data/admin.token")).unwrap();
    let token = token.trim();

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
    sigterm(&child);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    s.write_all(&body[5..]).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"results":[]}"#), "{answer}");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
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
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
        assert!(
            out.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
