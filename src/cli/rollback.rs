//! `unwind blast-radius` and `unwind rollback create|get|watch|decide|list`: the operator's view
//! of what a checkpoint covers and of the rollbacks the coordinator runs.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

use super::CliError;
use super::client::{Client, ClientArgs, Output};

#[derive(Debug, Args)]
pub struct BlastRadiusArgs {
    /// The ECT whose descendants are affected.
    pub jti: String,
    /// Follow at most this many edges down from the ECT (default: unbounded).
    #[arg(long)]
    pub max_depth: Option<u32>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum RollbackCommand {
    /// Request a rollback to a checkpoint, or to the nearest checkpoint above a failing ECT.
    ///
    /// Prints the rollback id and status; with --watch, follows it like `rollback watch`.
    ///
    /// Example: unwind rollback create --trigger 7f3c… --reason "DNS broke" --watch
    Create(CreateArgs),
    /// Show a rollback: its status and a table of its steps.
    ///
    /// Example: unwind rollback get urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427
    Get(IdArgs),
    /// Follow a rollback until it ends (exit 0 completed, 1 any other end, 3 awaiting a
    /// decision).
    ///
    /// Example: unwind rollback watch urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427
    Watch(IdArgs),
    /// Decide on a rollback that awaits a decision.
    ///
    /// Example: unwind rollback decide urn:uuid:1b4e… --decision proceed_partial --comment "a is fine"
    Decide(DecideArgs),
    /// List rollbacks, oldest first.
    ///
    /// Example: unwind rollback list --wid wf-42 --status awaiting_decision
    List(ListArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["checkpoint", "trigger"])))]
pub struct CreateArgs {
    /// Roll back to this checkpoint.
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Roll back to the nearest checkpoint above this ECT.
    #[arg(long)]
    pub trigger: Option<String>,
    /// What to undo (the coordinator's default: sub_dag).
    #[arg(long, value_enum)]
    pub scope: Option<ScopeArg>,
    /// Why, for the record.
    #[arg(long)]
    pub reason: Option<String>,
    /// What to do when an agent cannot prepare.
    #[arg(long, value_enum)]
    pub on_cannot_prepare: Option<OnCannotPrepareArg>,
    /// Rollback id (`urn:uuid:<uuid>`), making the request safe to repeat.
    #[arg(long)]
    pub id: Option<String>,
    /// Follow the rollback until it ends, like `rollback watch`.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Rollback id (`urn:uuid:…`).
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// Rollback id (`urn:uuid:…`).
    pub id: String,
    #[arg(long, value_enum)]
    pub decision: DecisionArg,
    /// Why, for the record.
    #[arg(long)]
    pub comment: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this workflow.
    #[arg(long)]
    pub wid: Option<String>,
    /// Only this status (accepted, preparing, executing, awaiting_decision, completed, partial,
    /// failed, aborted, superseded).
    #[arg(long)]
    pub status: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    #[value(name = "single")]
    Single,
    #[value(name = "sub_dag")]
    SubDag,
    #[value(name = "full_workflow")]
    FullWorkflow,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnCannotPrepareArg {
    Auto,
    Abort,
    Partial,
    Escalate,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DecisionArg {
    #[value(name = "proceed_partial")]
    ProceedPartial,
    #[value(name = "abort")]
    Abort,
    #[value(name = "retry")]
    Retry,
}

/// The wire name of a value, which is the name clap accepts.
fn wire<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

pub async fn blast_radius(args: BlastRadiusArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let depth = args.max_depth.map(|d| d.to_string());
    let query: Vec<(&str, &str)> = depth.iter().map(|d| ("max_depth", d.as_str())).collect();
    let body = client
        .get(&["v1", "ects", &args.jti, "blast-radius"], &query)
        .await?;
    if client.output == Output::Json {
        return print_json(&body);
    }
    let list = |k: &str| -> Vec<String> {
        body[k]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default()
    };
    let mut out = format!(
        "root {} (workflow {}), depth {}\n",
        text(&body["root"]),
        text(&body["wid"]),
        text(&body["depth"])
    );
    for (title, key) in [("nodes", "nodes"), ("agents", "agents")] {
        let items = list(key);
        out.push_str(&format!("{title} ({}):\n", items.len()));
        for i in items {
            out.push_str(&format!("  {i}\n"));
        }
    }
    let checkpoints = body["checkpoints"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("checkpoints ({}):\n", checkpoints.len()));
    let rows = checkpoints
        .iter()
        .map(|c| {
            vec![
                text(&c["jti"]),
                text(&c["agent"]),
                if c["reversible"] == true {
                    "reversible"
                } else {
                    "irreversible"
                }
                .into(),
                if c["expired"] == true {
                    "expired".into()
                } else {
                    format!("expires {}", text(&c["expires_at"]))
                },
            ]
        })
        .collect();
    out.push_str(&indent(&table(&["JTI", "AGENT", "KIND", "EXPIRY"], rows)));
    let irreversible = list("irreversible");
    if !irreversible.is_empty() {
        out.push_str(&format!("irreversible ({}):\n", irreversible.len()));
        for i in irreversible {
            out.push_str(&format!("  {i}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

pub async fn run(cmd: RollbackCommand) -> Result<(), CliError> {
    match cmd {
        RollbackCommand::Create(args) => create(args).await,
        RollbackCommand::Get(args) => {
            let client = Client::new(&args.client)?;
            let body = client.get(&["v1", "rollbacks", &args.id], &[]).await?;
            match client.output {
                Output::Json => print_json(&body),
                Output::Text => {
                    print!("{}", describe(&body));
                    Ok(())
                }
            }
        }
        RollbackCommand::Watch(args) => {
            let client = Client::new(&args.client)?;
            watch(&client, &args.id).await
        }
        RollbackCommand::Decide(args) => {
            let client = Client::new(&args.client)?;
            let mut body = json!({ "decision": wire(&args.decision) });
            if let Some(c) = args.comment {
                body["comment"] = Value::String(c);
            }
            let resource = client
                .post(&["v1", "rollbacks", &args.id, "decision"], &body)
                .await?;
            summary(&client, &resource)
        }
        RollbackCommand::List(args) => list(args).await,
    }
}

async fn create(args: CreateArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let mut body = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            body.insert(k.to_string(), Value::String(v));
        }
    };
    put("rollback_id", args.id);
    put("checkpoint_id", args.checkpoint);
    put("trigger_ect", args.trigger);
    put("scope", args.scope.as_ref().map(wire));
    put("reason", args.reason);
    put(
        "on_cannot_prepare",
        args.on_cannot_prepare.as_ref().map(wire),
    );
    let resource = client
        .post(&["v1", "rollbacks"], &Value::Object(body))
        .await?;
    let id = resource["rollback_id"]
        .as_str()
        .ok_or_else(|| CliError::Failed(format!("answer without rollback_id: {resource}")))?
        .to_string();
    if !args.watch {
        return summary(&client, &resource);
    }
    // The event stream starts with the current state, so JSON output stays one event a line.
    if client.output == Output::Text {
        summary(&client, &resource)?;
    }
    watch(&client, &id).await
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(w) = &args.wid {
        query.push(("wid", w));
    }
    if let Some(s) = &args.status {
        query.push(("status", s));
    }
    let items = client.get_all(&["v1", "rollbacks"], &query).await?;
    if client.output == Output::Json {
        return print_json(&json!({ "items": items, "next_cursor": null }));
    }
    if items.is_empty() {
        println!("no rollbacks");
        return Ok(());
    }
    let rows = items
        .iter()
        .map(|r| {
            vec![
                text(&r["rollback_id"]),
                text(&r["status"]),
                text(&r["wid"]),
                text(&r["checkpoint_id"]),
                text(&r["scope"]),
                text(&r["created_at"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ID", "STATUS", "WID", "CHECKPOINT", "SCOPE", "CREATED"],
            rows
        )
    );
    Ok(())
}

/// `<id> <status>` in text, the resource in JSON.
fn summary(client: &Client, resource: &Value) -> Result<(), CliError> {
    match client.output {
        Output::Json => print_json(resource),
        Output::Text => {
            println!(
                "{} {}",
                text(&resource["rollback_id"]),
                text(&resource["status"])
            );
            Ok(())
        }
    }
}

/// Follows the rollback's event stream until it ends, then maps its final state to an exit
/// code: 0 completed, 1 any other terminal state, 3 awaiting a decision.
pub async fn watch(client: &Client, id: &str) -> Result<(), CliError> {
    let mut response = client.events(&["v1", "rollbacks", id, "events"]).await?;
    let stdout_tty = std::io::stdout().is_terminal();
    let mut view = match client.output {
        Output::Json => View::Json,
        Output::Text if stdout_tty => View::Bars(Bars::new()),
        Output::Text => View::Lines(HashMap::new(), String::new()),
    };
    let mut parser = SseParser::default();
    let mut last: Option<Value> = None;
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|e| CliError::Failed(format!("event stream of {id} broke: {e}")))?;
        let Some(chunk) = chunk else { break };
        for event in parser.feed(&chunk) {
            if event.event == "error" {
                view.finish();
                return Err(stream_error(id, &event.data));
            }
            let data: Value = match event.event.as_str() {
                "" | "rollback" | "rollback.delta" => {
                    serde_json::from_str(&event.data).map_err(|e| {
                        CliError::Failed(format!("unreadable event {}: {e}", event.data))
                    })?
                }
                _ => continue,
            };
            let resource = match (event.event.as_str(), last.take()) {
                ("rollback.delta", Some(mut resource)) => {
                    apply_delta(&mut resource, &data);
                    resource
                }
                ("rollback.delta", None) => {
                    return Err(CliError::Failed(format!(
                        "the event stream of {id} sent a change before the rollback itself"
                    )));
                }
                _ => data,
            };
            view.show(&resource)?;
            let status = text(&resource["status"]);
            last = Some(resource);
            if status == "awaiting_decision" || is_terminal(&status) {
                view.finish();
                return outcome(id, last.as_ref());
            }
        }
    }
    view.finish();
    match last {
        Some(r) if is_terminal(r["status"].as_str().unwrap_or("")) => outcome(id, Some(&r)),
        Some(r) => Err(CliError::Failed(format!(
            "the event stream of {id} ended while it was {}",
            text(&r["status"])
        ))),
        None => Err(CliError::Failed(format!(
            "the event stream of {id} ended without an event"
        ))),
    }
}

/// Applies an `event: rollback.delta` (`version`, `status`, `updated_at` and the steps that
/// changed) to the rollback resource it follows.
fn apply_delta(resource: &mut Value, delta: &Value) {
    for field in ["status", "updated_at"] {
        if let Some(v) = delta.get(field) {
            resource[field] = v.clone();
        }
    }
    let changed = delta["steps"].as_array().into_iter().flatten();
    for step in changed {
        let Some(steps) = resource["steps"].as_array_mut() else {
            resource["steps"] = Value::Array(vec![step.clone()]);
            continue;
        };
        match steps
            .iter_mut()
            .find(|s| s["checkpoint_id"] == step["checkpoint_id"])
        {
            Some(old) => *old = step.clone(),
            None => steps.push(step.clone()),
        }
    }
}

/// The `event: error` a coordinator ends the stream with when its store fails: a problem.
fn stream_error(id: &str, data: &str) -> CliError {
    let problem: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let code = problem["code"].as_str().unwrap_or("error");
    let detail = problem["detail"].as_str().unwrap_or(data);
    CliError::Failed(format!("the event stream of {id} failed: {code}: {detail}"))
}

fn is_terminal(status: &str) -> bool {
    matches!(
        status,
        "completed" | "partial" | "failed" | "aborted" | "superseded"
    )
}

fn outcome(id: &str, last: Option<&Value>) -> Result<(), CliError> {
    let Some(r) = last else {
        return Err(CliError::Failed(format!("no state seen for {id}")));
    };
    match r["status"].as_str().unwrap_or("") {
        "completed" => Ok(()),
        "awaiting_decision" => Err(CliError::AwaitingDecision(format!(
            "rollback {id} awaits a decision; run: unwind rollback decide {id} --decision \
             proceed_partial|abort|retry [--comment TEXT]"
        ))),
        other => {
            let mut msg = format!("rollback {id} ended {other}");
            if let Some(agents) = r["failed_agents"].as_array().filter(|a| !a.is_empty()) {
                let names: Vec<String> = agents.iter().map(text).collect();
                msg.push_str(&format!(" (failed agents: {})", names.join(", ")));
            }
            if let Some(by) = r["superseded_by"].as_str() {
                msg.push_str(&format!(" (superseded by {by})"));
            }
            Err(CliError::Failed(msg))
        }
    }
}

/// How `watch` shows events.
enum View {
    /// One JSON document per event and line.
    Json,
    /// Plain lines for logs and pipes: the status when it changes, a step when it changes.
    Lines(HashMap<String, String>, String),
    /// Live progress lines in a terminal.
    Bars(Bars),
}

impl View {
    fn show(&mut self, r: &Value) -> Result<(), CliError> {
        match self {
            View::Json => {
                let line = serde_json::to_string(r).map_err(|e| CliError::Failed(e.to_string()))?;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            View::Lines(seen, status) => {
                let now = text(&r["status"]);
                if *status != now {
                    println!("{} {now}", text(&r["rollback_id"]));
                    *status = now;
                }
                for step in steps(r) {
                    let line = step_line(step);
                    let key = text(&step["checkpoint_id"]);
                    if seen.get(&key) != Some(&line) {
                        println!("  {line}");
                        seen.insert(key, line);
                    }
                }
            }
            View::Bars(bars) => bars.show(r),
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let View::Bars(bars) = self {
            bars.finish();
        }
    }
}

struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    steps: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let header = multi.add(ProgressBar::new_spinner().with_style(style()));
        header.enable_steady_tick(std::time::Duration::from_millis(120));
        Self {
            multi,
            header,
            steps: HashMap::new(),
        }
    }

    fn show(&mut self, r: &Value) {
        self.header.set_message(format!(
            "{} {}",
            text(&r["rollback_id"]),
            text(&r["status"])
        ));
        for step in steps(r) {
            let key = text(&step["checkpoint_id"]);
            let bar = self.steps.entry(key).or_insert_with(|| {
                let bar = self
                    .multi
                    .add(ProgressBar::new_spinner().with_style(style()));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                bar
            });
            let line = step_line(step);
            if step["execute_status"] != "pending" {
                bar.finish_with_message(line);
            } else {
                bar.set_message(line);
            }
        }
    }

    fn finish(&mut self) {
        for bar in self.steps.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
        self.header.finish();
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn steps(r: &Value) -> impl Iterator<Item = &Value> {
    r["steps"].as_array().into_iter().flatten()
}

fn step_line(step: &Value) -> String {
    let mut line = format!(
        "rank {} {} ({}): prepare {}, execute {}, attempts {}",
        text(&step["rank"]),
        text(&step["checkpoint_id"]),
        text(&step["agent"]),
        text(&step["prepare_status"]),
        text(&step["execute_status"]),
        text(&step["attempts"]),
    );
    if !step["error"].is_null() {
        line.push_str(&format!(", error {}", error_text(&step["error"])));
    }
    line
}

/// The text form of `rollback get`.
fn describe(r: &Value) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<13}{value}\n"));
    field("rollback", text(&r["rollback_id"]));
    field("status", text(&r["status"]));
    field("workflow", text(&r["wid"]));
    field("checkpoint", text(&r["checkpoint_id"]));
    field("scope", text(&r["scope"]));
    field("reason", text(&r["reason"]));
    field("requested_by", text(&r["requested_by"]));
    field("created_at", text(&r["created_at"]));
    field("updated_at", text(&r["updated_at"]));
    if let Some(agents) = r["failed_agents"].as_array().filter(|a| !a.is_empty()) {
        field(
            "failed",
            agents.iter().map(text).collect::<Vec<_>>().join(", "),
        );
    }
    if !r["superseded_by"].is_null() {
        field("superseded_by", text(&r["superseded_by"]));
    }
    let rows: Vec<Vec<String>> = steps(r)
        .map(|s| {
            vec![
                text(&s["rank"]),
                text(&s["checkpoint_id"]),
                text(&s["agent"]),
                text(&s["prepare_status"]),
                text(&s["execute_status"]),
                text(&s["attempts"]),
                if s["error"].is_null() {
                    "-".into()
                } else {
                    error_text(&s["error"])
                },
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "RANK",
            "CHECKPOINT",
            "AGENT",
            "PREPARE",
            "EXECUTE",
            "ATTEMPTS",
            "ERROR",
        ],
        rows,
    ));
    out
}

fn error_text(e: &Value) -> String {
    match (e["code"].as_str(), e["detail"].as_str()) {
        (Some(c), Some(d)) => format!("{c}: {d}"),
        (Some(c), None) => c.to_string(),
        _ => text(e),
    }
}

/// A JSON value as plain text: strings unquoted, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

pub(super) fn print_json(v: &Value) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::Failed(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

/// Incremental parser for `text/event-stream` (the subset the coordinator sends: `event`,
/// `id`, `data`, comments), fed with body chunks that may split lines anywhere.
#[derive(Debug, Default)]
struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    data: Vec<String>,
}

impl SseParser {
    fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let mut event = std::mem::take(&mut self.current);
                    event.data = std::mem::take(&mut self.data).join("\n");
                    events.push(event);
                } else {
                    self.current = SseEvent::default();
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => self.current.event = value.to_string(),
                "id" => self.current.id = Some(value.to_string()),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(
            p.feed(b": keep-alive\n\nevent: rollback\r\nid: 3\ndata: {\"a\"")
                .is_empty()
        );
        let events = p.feed(b":1}\n\nevent: rollback\nid: 4\ndata: x\ndata: y\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "rollback".into(),
                    id: Some("3".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "rollback".into(),
                    id: Some("4".into()),
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn a_delta_replaces_the_changed_steps_and_the_status() {
        let mut r = serde_json::json!({
            "rollback_id": "r", "status": "executing", "updated_at": "t0",
            "steps": [
                {"checkpoint_id": "a", "execute_status": "pending"},
                {"checkpoint_id": "b", "execute_status": "pending"},
            ],
        });
        apply_delta(
            &mut r,
            &serde_json::json!({
                "version": 7, "status": "executing", "updated_at": "t1",
                "steps": [{"checkpoint_id": "b", "execute_status": "compensated"}],
            }),
        );
        assert_eq!(r["updated_at"], "t1");
        assert_eq!(r["steps"][0]["execute_status"], "pending");
        assert_eq!(r["steps"][1]["execute_status"], "compensated");
        assert_eq!(r["rollback_id"], "r");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }
}
