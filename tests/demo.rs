//! `unwind demo --script`, the real binary: the whole tour on a free port in a temporary data
//! directory must end with exit 0 and every line of its checklist ticked. A hang fails the test
//! after a time limit instead of blocking the suite.

mod common;

use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::process::unwind;

/// The tour takes a few seconds (a breaker cooldown among them); this leaves room for a slow
/// machine while still catching a hang.
const LIMIT: Duration = Duration::from_secs(120);

/// Waits for `child` at most `limit`; kills it and returns `None` past that.
fn wait(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `unwind demo <args> --data-dir <data>`; returns (exit status, stdout, stderr).
fn demo(dir: &Path, data: &Path, args: &[&str]) -> (Option<ExitStatus>, String, String) {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = unwind()
        .arg("demo")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait(&mut child, LIMIT);
    (
        status,
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(err).unwrap(),
    )
}

#[test]
fn scripted_demo_shows_every_outcome_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let (status, stdout, stderr) =
        demo(dir.path(), &data, &["--script", "--listen", "127.0.0.1:0"]);
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("the demo did not end within {LIMIT:?}\n{shown}"));
    assert!(status.success(), "exit {status}\n{shown}");
    for line in [
        "[ok]      breaker opened: toward spiffe://demo.unwind.local/agent/router",
        "[ok]      cascade alert listed: error_clustering",
        "[ok]      escalation raised and decided: irreversible_checkpoint",
        "[ok]      rollback reached its expected end: partial (router completed, dns completed, notify escalated)",
        "[ok]      evidence present and verifying with the served JWKS: 5",
        "[ok]      workflow export audits clean:",
        "demo: every expected outcome happened",
    ] {
        assert!(stdout.contains(line), "no `{line}`\n{shown}");
    }
    assert!(!stdout.contains("[missing]"), "{shown}");
    // The real port is printed, never the 0 asked for.
    assert!(!stdout.contains("127.0.0.1:0"), "{shown}");
    assert!(stdout.contains("/ui"), "{shown}");
    for phase in 1..=9 {
        assert!(
            stdout.contains(&format!("[{phase}/9]")),
            "phase {phase}\n{shown}"
        );
    }
    // The data directory holds the embedded database and the admin token it names.
    assert!(data.join("unwind.db").is_file(), "{shown}");
    assert!(data.join("admin.token").is_file(), "{shown}");
}

#[test]
fn demo_refuses_a_data_directory_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("precious");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "keep me").unwrap();
    let (status, stdout, stderr) =
        demo(dir.path(), &data, &["--script", "--listen", "127.0.0.1:0"]);
    let status = status.expect("a refusal is immediate");
    assert_eq!(
        status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("did not make"), "{stderr}");
    assert!(data.join("notes.txt").is_file(), "nothing was removed");
}
