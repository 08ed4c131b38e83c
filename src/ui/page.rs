//! The page frame (navigation, skip link, sign-out), error pages and small formatting helpers
//! shared by every console page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::session::Session;
use crate::api::ApiError;

/// Characters kept as they are in a path segment or query value; everything else is escaped.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment or query value (jtis and wids are chosen by agents).
pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// The sections of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Workflows,
    Rollbacks,
    Escalations,
    Circuits,
    Cascades,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Workflows, "/ui/workflows", "Workflows"),
    (Section::Rollbacks, "/ui/rollbacks", "Rollbacks"),
    (Section::Escalations, "/ui/escalations", "Escalations"),
    (Section::Circuits, "/ui/circuits", "Circuits"),
    (Section::Cascades, "/ui/cascades", "Cascades"),
];

/// Options of a page beyond its body.
#[derive(Debug, Default)]
pub struct PageOptions {
    /// Reload the page this often when scripts are off (live pages).
    pub refresh_s: Option<u32>,
    /// Load the console script (live pages).
    pub script: bool,
}

/// A full console page for a signed-in operator.
pub fn page(
    session: &Session,
    section: Section,
    title: &str,
    options: PageOptions,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, &options))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/workflows" { "Unwind" }
                    nav aria-label="Sections" {
                        ul {
                            @for (s, href, label) in SECTIONS {
                                li { a href=(href) aria-current=[(s == section).then_some("page")] { (label) } }
                            }
                        }
                    }
                    form.signout method="post" action="/ui/logout" {
                        span.who { (session.name) " · " (role_label(session)) }
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    };
    respond(StatusCode::OK, markup)
}

/// A page without navigation (sign-in).
pub fn bare(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, &PageOptions::default()))
            body { main #main { (body) } }
        }
    };
    respond(status, markup)
}

fn head(title: &str, options: &PageOptions) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Unwind" }
            link rel="stylesheet" href="/ui/assets/console.css";
            @if let Some(s) = options.refresh_s {
                noscript { meta http-equiv="refresh" content=(s); }
            }
            @if options.script {
                script src="/ui/assets/console.js" defer {}
            }
        }
    }
}

fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Pages show live state and sit behind a session: never cached.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn role_label(session: &Session) -> &'static str {
    match session.role {
        crate::config::Role::Reader => "reader",
        crate::config::Role::Operator => "operator",
        crate::config::Role::Admin => "admin",
    }
}

/// An error shown as a page: the API's problem (`code`, `detail`) in words, with its status.
#[derive(Debug)]
pub struct UiError {
    pub status: StatusCode,
    pub code: String,
    pub detail: String,
}

impl UiError {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            detail: detail.into(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        Self::new(e.status, e.code, e.detail)
    }
}

impl From<crate::store::StoreError> for UiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = html! {
            section.problem role="alert" aria-labelledby="problem-title" {
                h1 #problem-title { (self.status.canonical_reason().unwrap_or("Error")) }
                p { (self.detail) }
                p.code { "code: " code { (self.code) } }
                p { a href="/ui/workflows" { "Back to the workflows" } }
            }
        };
        bare(self.status, "Error", body)
    }
}

/// First characters of a long id, with the whole id as a tooltip.
pub fn short_id(id: &str) -> Markup {
    let shown: String = id.trim_start_matches("urn:uuid:").chars().take(8).collect();
    html! { span.id title=(id) { (shown) } }
}

/// The last part of an agent id (`spiffe://example.com/agent/dns` -> `dns`).
pub fn agent_name(iss: &str) -> &str {
    iss.trim_end_matches('/').rsplit('/').next().unwrap_or(iss)
}

pub fn time(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(crate::api::rfc3339(t)) { (t.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

pub fn unix_time(seconds: i64) -> Markup {
    match DateTime::<Utc>::from_timestamp(seconds, 0) {
        Some(t) => time(t),
        None => html! { (seconds) },
    }
}

/// A status word as a badge; the class gives the colour, the word itself the meaning.
pub fn badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (status.replace('_', " ")) } }
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A note for readers where operators would see a form.
pub fn read_only_note() -> Markup {
    html! { p.note { "Signed in as a reader: actions need an operator token." } }
}

/// Serialized JSON shown as preformatted text.
pub fn json_block(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// A serde enum's wire name (`awaiting_decision`), the word the API uses too.
pub fn word<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}
