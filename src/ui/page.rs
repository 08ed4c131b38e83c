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

/// `raw` if the browser may be sent there after a form: a console path (`/ui/...`, relative to
/// this origin) of printable ASCII only: no control character (a CR or LF would split the
/// `Location` header), no space, no backslash, no `//` authority and no dot segment (which
/// would leave `/ui`). Anything else is `None`.
pub fn console_path(raw: &str) -> Option<&str> {
    let path = raw.split(['?', '#']).next().unwrap_or(raw);
    let acceptable = raw.starts_with("/ui/")
        && raw.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        && !path.contains("//")
        && !path.to_ascii_lowercase().contains("%2e")
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    acceptable.then_some(raw)
}

/// A `303 See Other` to `to`; a target that is not a valid header value (it never is once
/// [`console_path`] or [`enc`] made it) goes to the workflows instead of panicking.
pub fn see_other(to: &str) -> Response {
    let location =
        HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/ui/workflows"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
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
    let shown: String = visible(id.trim_start_matches("urn:uuid:"))
        .chars()
        .take(8)
        .collect();
    html! { span.id title=(visible(id)) { (shown) } }
}

/// Ids longer than this are shortened in the middle where they are shown as text.
const ID_SHOWN_CHARS: usize = 80;

/// An agent id as text: always the whole id (never only its last segment, which another id
/// could share: `spiffe://example.com/agent/../admin` is not `admin`), with invisible and
/// direction-changing characters spelt out; a very long id is shortened in the middle with a
/// visible ellipsis, its full text in `title` and for screen readers.
pub fn agent_id(iss: &str) -> Markup {
    let full = visible(iss);
    let shown = middle_ellipsis(&full, ID_SHOWN_CHARS);
    html! {
        @if shown == full {
            span.agent title=(full) { (full) }
        } @else {
            span.agent title=(full) {
                span aria-hidden="true" { (shown) }
                span.sr-only { (full) }
            }
        }
    }
}

/// `s` with control, invisible and bidirectional-formatting characters written as `\u{..}`,
/// so that an id cannot look like another one.
pub fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}'
            | '\u{17b5}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
            | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}')
}

/// `s` if it has at most `max` characters, else its start and end around a `…`.
pub fn middle_ellipsis(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_printable_console_paths_are_followed() {
        for ok in [
            "/ui/workflows",
            "/ui/rollbacks/urn%3Auuid%3A1",
            "/ui/escalations?x=1#open",
            "/ui/workflows/w?node=a%2F..%2Fb#dag",
        ] {
            assert_eq!(console_path(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "/ui",
            "/v1/ects",
            "https://evil.example/ui/",
            "//evil.example/ui/",
            "/ui//evil.example",
            "/ui/\\evil",
            "/ui/x\r\nSet-Cookie: a=b",
            "/ui/x\n",
            "/ui/x\u{7f}",
            "/ui/x\u{0}",
            "/ui/x\ty",
            "/ui/x y",
            "/ui/\u{202e}x",
            "/ui/é",
            "/ui/../v1/ects",
            "/ui/./x",
            "/ui/%2E%2e/v1",
            "/ui/x/..",
        ] {
            assert_eq!(console_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_redirect_to_anything_answers_without_panicking() {
        let r = see_other("/ui/x\r\n");
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/ui/workflows");
        assert_eq!(see_other("/ui/a").headers()[header::LOCATION], "/ui/a");
    }

    #[test]
    fn ids_are_shown_whole_with_hidden_characters_spelt_out() {
        assert_eq!(
            visible("spiffe://a/b\u{202e}c\u{200b}"),
            "spiffe://a/b\\u{202e}c\\u{200b}"
        );
        assert_eq!(visible("tab\there"), "tab\\u{9}here");
        assert_eq!(middle_ellipsis("abcdef", 6), "abcdef");
        assert_eq!(middle_ellipsis("abcdefgh", 5), "ab…gh");
        let long = format!("spiffe://example.com/{}/admin", "x".repeat(100));
        let shown = agent_id(&long).into_string();
        assert!(shown.contains(&format!("title=\"{long}\"")), "{shown}");
        assert!(shown.contains("spiffe://example.com/xxx"), "{shown}");
        assert!(shown.contains("xx/admin</span>"), "{shown}");
        assert!(shown.contains('…'), "{shown}");
        let short = agent_id("spiffe://example.com/agent/../admin").into_string();
        assert_eq!(
            short,
            "<span class=\"agent\" title=\"spiffe://example.com/agent/../admin\">\
             spiffe://example.com/agent/../admin</span>"
        );
    }
}
