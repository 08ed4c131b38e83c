//! A real webhook receiver for tests: an HTTP server on 127.0.0.1 that records every request
//! (signature header and raw body), can be told to answer 500, and can be stopped and started
//! again on the same port. Every answer closes its connection, so a stopped receiver is
//! really unreachable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: String,
    pub content_type: String,
    pub body: String,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    failing: AtomicBool,
}

pub struct Receiver {
    pub url: String,
    port: u16,
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Receiver {
    /// A receiver, listening at once.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            shared: Arc::default(),
            task: Mutex::new(None),
        };
        r.serve(listener);
        r
    }

    /// A receiver whose port is reserved but that does not listen yet.
    pub async fn down() -> Receiver {
        let r = Receiver::start().await;
        r.stop();
        r
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self.shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.task.lock().unwrap() = Some(task);
    }

    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }

    pub async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }

    pub fn fail(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn hook(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let status = if shared.failing.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        shared.received.lock().unwrap().push(Received {
            signature: get("unwind-signature"),
            content_type: get("content-type"),
            body,
        });
        StatusCode::OK
    };
    (status, [(header::CONNECTION, "close")])
}

/// Independent check of `Unwind-Signature: t=..,v1=..` over `body`.
pub fn signature_verifies(secret: &[u8], header: &str, body: &str) -> bool {
    let mut t = "";
    let mut v1 = "";
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v,
            Some(("v1", v)) => v1 = v,
            _ => {}
        }
    }
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, format!("{t}.{body}").as_bytes());
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap_or(0);
    hex::encode(tag.as_ref()) == v1 && age.abs() < 300
}

pub const SECRET: &str = "webhook-secret-0123456789";

/// Test configuration: one webhook at `url`, fast retries.
pub fn with_webhook(url: String) -> impl Fn(&mut unwind::config::Config) {
    move |c| {
        super::agents::short(c);
        c.hitl.webhooks = vec![unwind::config::WebhookConfig {
            url: url.clone(),
            secret: Some(SECRET.into()),
            secret_env: None,
        }];
        c.hitl.retry_initial_ms = 100;
        c.hitl.retry_max_s = 1;
        c.hitl.timeout_ms = 1000;
        c.hitl.poll_ms = 100;
    }
}
