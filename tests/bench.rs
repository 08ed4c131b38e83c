//! `unwind bench soak` and `unwind bench all --quick` as a user runs them: the real binary, its
//! exit code, and the files and JSON it writes. The sizes are tiny: these check that every part
//! runs and reports what docs/benchmarks.md relies on, not the figures.

mod common;

use common::postgres_admin_url;
use common::process::{run_cli, unwind};
use serde_json::Value;

fn soak(out: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = unwind();
    cmd.args(["bench", "soak", "--duration", "6s", "--sample-every", "2s"])
        .args(["--rate", "20", "--out"])
        .arg(out)
        .args(extra);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soak_writes_its_samples_plot_and_verdict_and_fails_when_the_verdict_does() {
    let dir = tempfile::tempdir().unwrap();
    // Thresholds no seconds-long run can miss: this run must pass.
    let out = dir.path().join("pass");
    let lenient = [
        "--max-rss-slope-mib-per-h",
        "1000000000",
        "--max-p99-ratio",
        "1000",
        "--p99-slack-ms",
        "100000",
    ];
    let run = run_cli(soak(&out, &lenient)).await.ok();
    assert!(run.stdout.contains("verdict: pass"), "{}", run.stdout);

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("soak.json")).unwrap()).unwrap();
    let samples = report["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{report}");
    for s in samples {
        assert!(s["rss_mib"].as_f64().unwrap() > 1.0, "{s}");
        for kind in [
            "ingest_single",
            "ingest_batch",
            "blast_radius",
            "dag",
            "rollback",
            "escalation",
        ] {
            let k = &s["kinds"][kind];
            assert!(k["count"].is_u64() && k["p99_ms"].is_f64(), "{kind}: {s}");
        }
    }
    // Every kind ran during the soak, and none failed.
    for kind in [
        "ingest_single",
        "ingest_batch",
        "blast_radius",
        "dag",
        "rollback",
    ] {
        let ran: u64 = samples
            .iter()
            .map(|s| s["kinds"][kind]["count"].as_u64().unwrap())
            .sum();
        assert!(ran > 0, "no {kind} requests: {report}");
    }
    let verdict = &report["verdict"];
    assert_eq!(verdict["pass"], true, "{verdict}");
    assert_eq!(verdict["errors"], 0);
    assert!(verdict["rss_slope_mib_per_h"].is_f64());
    assert!(!verdict["p99"].as_array().unwrap().is_empty());
    assert!(report["rss_measured"].as_str().unwrap().contains("VmRSS"));

    let svg = std::fs::read_to_string(out.join("soak.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline") && svg.contains("verdict: pass"));

    // No memory trend is below -10^9 MiB/h: the verdict fails and so does the command (the
    // unit tests of `verdict` cover the p99 and error checks on synthetic series).
    let out = dir.path().join("fail");
    let strict = ["--max-rss-slope-mib-per-h=-1000000000"];
    let run = run_cli(soak(&out, &strict)).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("soak failed: RSS grows"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("GROWING"), "{}", run.stdout);
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("soak.json")).unwrap()).unwrap();
    assert_eq!(report["verdict"]["pass"], false);
    let svg = std::fs::read_to_string(out.join("soak.svg")).unwrap();
    assert!(svg.contains("verdict: FAIL"));
}

#[tokio::test]
async fn a_soak_shorter_than_two_windows_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = unwind();
    cmd.args([
        "bench",
        "soak",
        "--duration",
        "5s",
        "--sample-every",
        "10s",
        "--out",
    ])
    .arg(dir.path());
    let run = run_cli(cmd).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let mut cmd = unwind();
    cmd.args(["bench", "soak", "--duration", "ten minutes"]);
    assert_eq!(run_cli(cmd).await.code, Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quick_performance_record_lists_every_figure_beside_its_limit() {
    let pg = postgres_admin_url();
    let mut cmd = unwind();
    cmd.args(["bench", "all", "--quick", "--json"]);
    if let Some(url) = &pg {
        cmd.args(["--database-url", url]);
    }
    let run = run_cli(cmd).await.ok();
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["quick"], true);
    assert!(report["machine"]["cores"].as_f64().unwrap() >= 1.0);
    let figures = report["figures"].as_array().unwrap();
    let named = |part: &str| {
        figures
            .iter()
            .filter(|f| f["name"].as_str().unwrap().contains(part))
            .count()
    };
    assert_eq!(named("ingest, batches of 500"), 1, "{report}");
    assert_eq!(named("single-token ingest p99"), 1);
    assert_eq!(named("blast radius"), 2);
    assert_eq!(named("load from the store + graph build"), 2);
    assert_eq!(named("rollback, 41 steps"), 1);
    assert_eq!(named("coordinator overhead"), 1);
    for f in figures {
        let value = f["value"].as_f64().unwrap();
        assert!(value > 0.0, "{f}");
        let limit = f["limit"].as_f64().unwrap();
        let ratio = f["ratio"].as_f64().unwrap();
        assert!((ratio - value / limit).abs() < 1e-9, "{f}");
        assert!(!f["limit_is"].as_str().unwrap().is_empty(), "{f}");
    }
    // The blast radius reaches every node of the synthetic workflows, and every node stored
    // is loaded back.
    for g in report["blast_radius"].as_array().unwrap() {
        assert_eq!(g["reached"], g["nodes"], "{g}");
        assert_eq!(g["load_from_store"]["nodes"], g["nodes"], "{g}");
    }
    assert_eq!(report["rollback"]["runs"][0]["status"], "completed");
    if pg.is_some() {
        assert_eq!(named("unwind serve replica"), 2, "{report}");
        assert_eq!(named("replica scaling"), 1);
        assert!(report["replicas"]["tokens_per_s"]["3"].as_f64().unwrap() > 0.0);
        assert_eq!(named("rollbacks, "), 2, "{report}");
        for n in ["1", "3"] {
            assert_eq!(
                report["replicas"]["rollbacks_completed"][n], report["replicas"]["rollbacks"],
                "{report}"
            );
        }
    } else {
        assert_eq!(named("replica"), 0);
    }
}
