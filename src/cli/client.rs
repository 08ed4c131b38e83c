//! The HTTP client shared by the operator commands (`blast-radius`, `rollback …`, `dag`,
//! `export`): where the
//! coordinator is, which token to send, and how its answers become exit codes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::CliError;

/// Connection and output options of every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the coordinator.
    #[arg(long, env = "UNWIND_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token; default: the admin token in the data directory.
    #[arg(long, env = "UNWIND_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory holding `admin.token` (used when no token is given).
    #[arg(long, env = "UNWIND_DATA_DIR", default_value = "unwind-data")]
    pub data_dir: PathBuf,
    /// Output format: a readable summary, or the API's JSON.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// A configured connection to one coordinator.
pub struct Client {
    base: Url,
    token: String,
    http: reqwest::Client,
    pub output: Output,
}

impl Client {
    /// Checks the URL and resolves the token before any request, so configuration mistakes
    /// are usage errors (exit 2) rather than failed calls.
    pub fn new(args: &ClientArgs) -> Result<Self, CliError> {
        let base = Url::parse(&args.url)
            .map_err(|e| CliError::Usage(format!("--url {}: {e}", args.url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(CliError::Usage(format!(
                "--url {}: expected an http:// or https:// URL",
                args.url
            )));
        }
        let token = match args.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => read_admin_token(args)?,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("unwind-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            base,
            token,
            http,
            output: args.output,
        })
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded (ids and jtis
    /// may hold characters that are special in a path).
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, CliError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| CliError::Usage(format!("--url {}: not a base URL", self.base)))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, CliError> {
        let url = self.url(segments, query)?;
        let response = self
            .send(self.http.request(Method::GET, url.clone()), &url)
            .await?;
        json_body(response, &url).await
    }

    /// Every item of a list endpoint, following `next_cursor` to the last page.
    pub async fn get_all(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Vec<Value>, CliError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            if let Some(c) = &cursor {
                q.push(("cursor", c));
            }
            let page = self.get(segments, &q).await?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                // A cursor that repeats would loop forever.
                Some(next) if Some(next) != cursor.as_deref() => cursor = Some(next.to_string()),
                _ => return Ok(items),
            }
        }
    }

    pub async fn post(&self, segments: &[&str], body: &Value) -> Result<Value, CliError> {
        let url = self.url(segments, &[])?;
        let request = self.http.request(Method::POST, url.clone()).json(body);
        let response = self.send(request, &url).await?;
        json_body(response, &url).await
    }

    /// Opens a Server-Sent Events stream; the caller reads the body chunk by chunk.
    pub async fn events(&self, segments: &[&str]) -> Result<reqwest::Response, CliError> {
        self.get_raw(segments, &[], "text/event-stream").await
    }

    /// A GET whose body the caller reads itself (text formats, large documents read chunk by
    /// chunk); non-2xx answers are errors as with [`Client::get`].
    pub async fn get_raw(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        accept: &str,
    ) -> Result<reqwest::Response, CliError> {
        let url = self.url(segments, query)?;
        let request = self
            .http
            .request(Method::GET, url.clone())
            .header(reqwest::header::ACCEPT, accept);
        self.send(request, &url).await
    }

    /// Sends with the bearer token; any non-2xx answer becomes a [`CliError::Failed`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, CliError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| connection_error(url, &e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(problem(response).await)
        }
    }
}

/// The admin token written by `unwind serve` on first start.
fn read_admin_token(args: &ClientArgs) -> Result<String, CliError> {
    let path = args.data_dir.join("admin.token");
    let token = std::fs::read_to_string(&path).map_err(|e| {
        CliError::Usage(format!(
            "no token: give --token or UNWIND_TOKEN, or point --data-dir/UNWIND_DATA_DIR at the \
             coordinator's data directory ({} cannot be read: {e})",
            path.display()
        ))
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "no token: {} is empty; give --token or UNWIND_TOKEN",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// Names the URL and the cause, since "error sending request" alone does not help.
fn connection_error(url: &Url, e: &reqwest::Error) -> CliError {
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = format!("{cause}: {s}");
        source = s.source();
    }
    let mut origin = url.clone();
    origin.set_path("");
    origin.set_query(None);
    CliError::Failed(format!("cannot reach the coordinator at {origin}: {cause}"))
}

/// Turns a problem+json answer into `<code>: <detail>`; any other body is shown as text.
async fn problem(response: reqwest::Response) -> CliError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(body) if body.get("code").is_some() => {
            let code = body["code"].as_str().unwrap_or("error");
            let detail = body
                .get("detail")
                .and_then(Value::as_str)
                .or_else(|| body.get("title").and_then(Value::as_str))
                .unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
            let mut message = format!("{code}: {detail}");
            if let Some(other) = body.get("conflicting_rollback_id").and_then(Value::as_str) {
                message.push_str(&format!(" (conflicting rollback {other})"));
            }
            CliError::Failed(message)
        }
        _ => CliError::Failed(format!(
            "HTTP {}: {}",
            status.as_u16(),
            short(&text, status)
        )),
    }
}

fn short(text: &str, status: StatusCode) -> String {
    let t = text.trim();
    if t.is_empty() {
        status.canonical_reason().unwrap_or("").to_string()
    } else {
        t.chars().take(300).collect()
    }
}

async fn json_body(response: reqwest::Response, url: &Url) -> Result<Value, CliError> {
    response
        .json::<Value>()
        .await
        .map_err(|e| CliError::Failed(format!("{url}: unreadable answer: {e}")))
}
