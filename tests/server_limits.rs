//! The server's own limits, over real sockets: a client that sends its request header slowly
//! is closed after `limits.header_read_timeout_ms`, an idle keep-alive connection after
//! `limits.idle_timeout_s`, and with `limits.max_connections` taken by idle clients (or more
//! idle clients than descriptors) a new `/healthz` is still answered (the real `unwind serve`
//! binary). A request running past
//! `limits.request_timeout_s` is answered 503 problem+json, and `metrics.require_auth` closes
//! `/metrics` to callers without a token (on every configured store).

mod common;

use std::time::{Duration, Instant};

use common::process::{ServeOptions, ServeProcess, ServeSetup};
use common::server::{READER_TOKEN, servers_with};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unwind::config::TrustIssuerConfig;
use unwind::ect::{KeyAlg, Profile, SigningKey};

async fn serve(extra: &'static str) -> (ServeSetup, ServeProcess) {
    let setup = ServeSetup::new(ServeOptions {
        extra,
        ..Default::default()
    })
    .await;
    let process = setup.start("a").await;
    (setup, process)
}

/// Reads until the peer closes the connection (`Ok(bytes read)`), or fails after `limit`.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return Err(format!("still open after {limit:?}")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one keep-alive `GET /healthz` and reads its whole answer (the body has a length).
async fn healthz_on(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: unwind\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed before answering: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_sent_header_is_cut_off_after_the_header_timeout() {
    let (_setup, p) = serve("[limits]\nheader_read_timeout_ms = 800\nidle_timeout_s = 30\n").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", p.port())).await.unwrap();
    let started = Instant::now();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: unwind\r\n")
        .await
        .unwrap();
    // Trickle a header line now and then, as a slowloris client does: no help.
    let mut closed = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tcp
            .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), tcp.peek(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "a slowloris connection stayed open for {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_millis(3000),
        "closed after {elapsed:?}, expected about 800 ms"
    );
    // The server is unharmed.
    let mut fresh = TcpStream::connect(("127.0.0.1", p.port())).await.unwrap();
    assert!(healthz_on(&mut fresh).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_setup, p) = serve("[limits]\nheader_read_timeout_ms = 500\nidle_timeout_s = 2\n").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", p.port())).await.unwrap();
    assert!(healthz_on(&mut tcp).await.starts_with("HTTP/1.1 200"));
    // Idle longer than the header timeout: still open, the header timeout runs only once a
    // request has started.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        healthz_on(&mut tcp).await.starts_with("HTTP/1.1 200"),
        "closed by the header timeout while idle"
    );
    let idle_from = Instant::now();
    let rest = read_until_closed(&mut tcp, Duration::from_secs(10))
        .await
        .unwrap();
    let idle = idle_from.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        idle >= Duration::from_millis(1800) && idle < Duration::from_secs(5),
        "closed after {idle:?} idle, expected about 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_limit_make_room_for_healthz() {
    let (_setup, p) = serve("[limits]\nmax_connections = 8\n").await;
    // Eight clients take every slot: four after one request each, four that sent nothing.
    let mut idle = Vec::new();
    for i in 0..8 {
        let mut tcp = TcpStream::connect(("127.0.0.1", p.port())).await.unwrap();
        if i % 2 == 0 {
            assert!(healthz_on(&mut tcp).await.starts_with("HTTP/1.1 200"));
        }
        idle.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..3 {
        let started = Instant::now();
        let client = reqwest::Client::new();
        let response =
            tokio::time::timeout(Duration::from_secs(5), client.get(p.url("/healthz")).send())
                .await
                .unwrap_or_else(|_| panic!("round {round}: /healthz not answered at the limit"))
                .unwrap();
        assert_eq!(response.status(), 200, "round {round}");
        assert!(started.elapsed() < Duration::from_secs(2), "round {round}");
    }
    // Room was made by closing idle connections.
    let mut closed = 0;
    for tcp in &mut idle {
        if read_until_closed(tcp, Duration::from_millis(200))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection was closed");
}

/// The attack as reported: more idle connections than the process has descriptors
/// (`ulimit -n 256`, 364 clients). The default `limits.max_connections`, half the open-file
/// limit, keeps descriptors free and closes the idlest connections, so `/healthz` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_open_file_limit_do_not_starve_healthz() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("unwind-data");
    let p = ServeProcess::start_in_shell(tmp.path(), &data, "ulimit -n 256", &[]).unwrap();
    let mut idle = Vec::new();
    for _ in 0..364 {
        idle.push(TcpStream::connect(("127.0.0.1", p.port())).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    for round in 0..3 {
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            client.get(p.url("/healthz")).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: /healthz starved"))
        .unwrap();
        assert_eq!(response.status(), 200, "round {round}");
    }
    drop(idle);
}

/// A slow upstream during a request: the token's issuer publishes its keys at a URL that
/// accepts connections and never answers, so verifying the token outlasts the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_request_timeout_is_answered_503_problem() {
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}/jwks.json", hang.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = hang.accept().await {
            open.push(tcp);
        }
    });
    const SLOW_ISSUER: &str = "spiffe://slow.example/agent/x";
    let url = hang_url.clone();
    for s in servers_with(move |c| {
        c.limits.request_timeout_s = 1;
        c.rollback.agent_timeout_ms = 500;
        c.trust.issuers.push(TrustIssuerConfig {
            id: SLOW_ISSUER.into(),
            jwks_url: Some(url.clone()),
            rollback_hosts: vec!["127.0.0.1".into()],
            allow_http: true,
            ..Default::default()
        });
    })
    .await
    {
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let mut claims = common::server::claims(
            "x",
            &uuid::Uuid::new_v4().to_string(),
            &common::agents::wid(),
            "task",
            &[],
        );
        claims.insert("iss".into(), SLOW_ISSUER.into());
        let token = key.sign_ect(&claims, Profile::Draft00).unwrap();
        let started = Instant::now();
        let response = s.post_token(&token).await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 503, "{}", s.name);
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
            "{}: answered after {elapsed:?}",
            s.name
        );
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("application/problem+json"),
            "{}: {content_type}",
            s.name
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "unavailable", "{}: {body}", s.name);
        assert_eq!(body["status"], 503, "{}: {body}", s.name);
        assert_eq!(s.count().await, 0, "{}: nothing stored", s.name);
    }
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_require_a_token_when_configured() {
    for s in servers_with(|c| c.metrics.require_auth = true).await {
        let anonymous = s.client.get(s.url("/metrics")).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{}", s.name);
        let body: Value = anonymous.json().await.unwrap();
        assert_eq!(body["code"], "unauthenticated", "{}: {body}", s.name);
        let wrong = s
            .client
            .get(s.url("/metrics"))
            .bearer_auth("not-a-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{}", s.name);
        let reader = s
            .client
            .get(s.url("/metrics"))
            .bearer_auth(READER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(reader.status(), 200, "{}", s.name);
    }
    // Open by default.
    for s in servers_with(|_| {}).await {
        let anonymous = s.client.get(s.url("/metrics")).send().await.unwrap();
        assert_eq!(anonymous.status(), 200, "{}", s.name);
    }
}
