//! A small real HTTP proxy in front of a real agent, for tests that need a fault the agent would
//! not produce by itself: it forwards each protocol call to the agent unless a planned fault
//! takes it (a delay, a 5xx, another answer instead of the agent's, a closed connection, no
//! answer at all). It records every request it receives.
//!
//! One request per connection: every answer carries `connection: close`, so each call of a
//! pooling client opens its own connection and meets the plan.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The protocol call a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Prepare,
    Execute,
    /// Either.
    Any,
}

/// What the proxy does with one call.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Waits, then forwards.
    Delay(Duration),
    /// Answers `status` with a problem body; the agent never sees the call.
    Status(u16),
    /// Answers `status` with `body` (`content-type` given); the agent never sees the call.
    Answer {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// Forwards, lets the agent act, then answers `body` instead of the agent's answer (status
    /// and content type kept).
    Rewrite(fn(&Value) -> String),
    /// Answers a redirect to `location`; the agent never sees the call.
    Redirect(String),
    /// Reads the call, then closes the connection without answering.
    Drop,
}

/// A planned fault: the call it hits and how many more times (`None`: every time).
#[derive(Debug, Clone)]
struct Rule {
    call: Call,
    fault: Fault,
    remaining: Option<u32>,
}

/// A request the proxy received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub context: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct State {
    rules: VecDeque<Rule>,
    seen: Vec<Seen>,
    injected: u32,
}

impl State {
    /// The first rule for `call` that has uses left, used once.
    fn take(&mut self, call: Call) -> Option<Fault> {
        let rule = self.rules.iter_mut().find(|r| {
            (r.call == Call::Any || r.call == call) && r.remaining.is_none_or(|n| n > 0)
        })?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        self.injected += 1;
        Some(rule.fault.clone())
    }
}

/// The proxy. Dropping it stops it.
pub struct FaultProxy {
    /// The execute URL through the proxy (`.../.well-known/cascade/rollback`).
    pub uri: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 forwarding to the agent whose execute URL is `agent_uri`.
    pub async fn start(agent_uri: &str) -> Self {
        let upstream: SocketAddr = agent_uri
            .trim_start_matches("http://")
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not an http://ip:port/... URL: {agent_uri}"));
        let path = agent_uri
            .trim_start_matches("http://")
            .split_once('/')
            .map(|(_, p)| format!("/{p}"))
            .unwrap_or_default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}{path}", listener.local_addr().unwrap());
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_one(conn, upstream, shared.clone()));
            }
        });
        Self { uri, state, task }
    }

    /// Plans `fault` for the next `times` calls of `call` (`None`: every one), after the faults
    /// already planned for them.
    pub fn plan(&self, call: Call, fault: Fault, times: Option<u32>) -> &Self {
        self.state.lock().unwrap().rules.push_back(Rule {
            call,
            fault,
            remaining: times,
        });
        self
    }

    /// Drops every planned fault: calls are forwarded from now on.
    pub fn heal(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u32 {
        self.state.lock().unwrap().injected
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One parsed request: raw bytes, method, target, headers, body offset.
struct Request {
    raw: Vec<u8>,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body_start: usize,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// Reads one request (head and `content-length` body); `None` when the peer went away first.
async fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        raw: buf,
        method,
        target,
        headers,
        body_start: head_end,
    })
}

/// Sends the request to the agent with `connection: close` and reads its whole answer.
async fn forward(request: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let line_end = find(request, b"\r\n")? + 2;
    let mut out = request[..line_end].to_vec();
    out.extend_from_slice(b"connection: close\r\n");
    out.extend_from_slice(&request[line_end..]);
    let mut agent = TcpStream::connect(upstream).await.ok()?;
    agent.write_all(&out).await.ok()?;
    let mut answer = Vec::new();
    agent.read_to_end(&mut answer).await.ok()?;
    Some(answer)
}

/// Writes an answer and closes.
async fn answer(conn: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &str) {
    let mut text = format!(
        "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    let _ = conn.write_all(text.as_bytes()).await;
    let _ = conn.shutdown().await;
}

fn reason(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status")
}

/// The status, content type and body of a raw HTTP/1.1 answer read to its end.
fn split_answer(raw: &[u8]) -> Option<(u16, String, Vec<u8>)> {
    let head_end = find(raw, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Some((status, content_type, raw[head_end..].to_vec()))
}

/// Forwards the request and relays the agent's answer as it is.
async fn pass(conn: &mut TcpStream, request: &[u8], upstream: SocketAddr) {
    if let Some(reply) = forward(request, upstream).await {
        let _ = conn.write_all(&reply).await;
    }
    let _ = conn.shutdown().await;
}

async fn serve_one(mut conn: TcpStream, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    let Some(request) = read_request(&mut conn).await else {
        return;
    };
    let (path, query) = match request.target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (request.target.clone(), None),
    };
    let call = if path.ends_with("/prepare") {
        Call::Prepare
    } else {
        Call::Execute
    };
    let fault = {
        let mut state = state.lock().unwrap();
        state.seen.push(Seen {
            method: request.method.clone(),
            path,
            query,
            context: request.header("execution-context"),
            content_type: request.header("content-type"),
            body: serde_json::from_slice(&request.raw[request.body_start..]).unwrap_or(Value::Null),
        });
        state.take(call)
    };
    match fault {
        None => pass(&mut conn, &request.raw, upstream).await,
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            pass(&mut conn, &request.raw, upstream).await;
        }
        Some(Fault::Status(status)) => {
            let body = format!(
                r#"{{"type":"about:blank","status":{status},"code":"injected","title":"injected by the test proxy"}}"#
            );
            let ct = [("content-type", "application/problem+json")];
            answer(&mut conn, status, &ct, &body).await;
        }
        Some(Fault::Answer {
            status,
            content_type,
            body,
        }) => answer(&mut conn, status, &[("content-type", content_type)], &body).await,
        Some(Fault::Rewrite(rewrite)) => {
            let Some((status, content_type, body)) = forward(&request.raw, upstream)
                .await
                .and_then(|raw| split_answer(&raw))
            else {
                return;
            };
            let original = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let body = rewrite(&original);
            answer(
                &mut conn,
                status,
                &[("content-type", content_type.as_str())],
                &body,
            )
            .await;
        }
        Some(Fault::Redirect(location)) => {
            let headers = [
                ("location", location.as_str()),
                ("content-type", "application/json"),
            ];
            answer(&mut conn, 302, &headers, r#"{"status":"prepared"}"#).await;
        }
        Some(Fault::Drop) => drop(conn),
    }
}
