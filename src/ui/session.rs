//! Signing in: the login form, the session cookie and the per-session CSRF token.
//!
//! The cookie holds the operator token itself (base64url, so any token is cookie-safe):
//! `HttpOnly` keeps it from scripts, `SameSite=Strict` from other sites' requests, `Path=/ui`
//! from the API, and `Secure` is set when the public URL is https. Every form also carries a
//! token derived from the session (SHA-256), which another site cannot compute.

use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::html;
use serde::Deserialize;

use super::page::{self, UiError};
use crate::api::{AppState, Caller};
use crate::config::Role;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "unwind_session";
/// How long a console session lasts without signing in again.
const SESSION_MAX_AGE_S: u64 = 12 * 3600;

/// A signed-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub name: String,
    pub role: Role,
    /// The value every form must send back as `csrf`.
    pub csrf: String,
}

impl Session {
    /// The caller the API functions see: the same operator as a bearer token would be.
    pub fn caller(&self) -> Caller {
        Caller::Operator {
            name: self.name.clone(),
            role: self.role,
        }
    }

    pub fn can_act(&self) -> bool {
        self.role >= Role::Operator
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, sent: Option<&str>) -> Result<(), UiError> {
        // Both sides are hex of a SHA-256: equal length; the value is not secret-dependent
        // beyond the session, and the cookie never leaves the browser to other sites.
        if sent == Some(self.csrf.as_str()) {
            Ok(())
        } else {
            Err(UiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "This form is stale or did not come from the console. Reload the page and try again.",
            ))
        }
    }
}

/// The CSRF token of the session signed in with `token`.
pub fn csrf_token(token: &str) -> String {
    crate::ect::sha256_hex(format!("unwind-console-csrf:{token}").as_bytes())
}

fn token_from_cookies(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .and_then(|(_, value)| URL_SAFE_NO_PAD.decode(value).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let found = token_from_cookies(&parts.headers)
            .and_then(|token| state.auth.operator(&token).map(|(n, r)| (n, r, token)));
        match found {
            Some((name, role, token)) => Ok(Session {
                name,
                role,
                csrf: csrf_token(&token),
            }),
            None => {
                // Back to the page asked for once signed in (only console paths: no open
                // redirect).
                // Inside the nested router `uri` has lost its `/ui` prefix; the original has it.
                let uri = parts
                    .extensions
                    .get::<axum::extract::OriginalUri>()
                    .map_or(&parts.uri, |o| &o.0);
                let next = uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .filter(|p| p.starts_with("/ui/") && parts.method == axum::http::Method::GET)
                    .unwrap_or("/ui/workflows");
                let to = format!("/ui/login?next={}", page::enc(next));
                Err(page::see_other(&to))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: Option<String>,
    next: Option<String>,
}

/// Only console paths are followed after signing in; anything else goes to the workflows.
fn safe_next(next: Option<&str>) -> &str {
    next.and_then(page::console_path).unwrap_or("/ui/workflows")
}

pub async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    login_form(StatusCode::OK, safe_next(q.next.as_deref()), None)
}

fn login_form(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        section.login aria-labelledby="login-title" {
            h1 #login-title { "Sign in to Unwind" }
            p { "Paste an operator token. A " strong { "reader" } " token shows everything; an "
                strong { "operator" } " token can also start rollbacks and decide escalations. "
                "On the coordinator's host the admin token is in "
                code { "unwind-data/admin.token" } "." }
            @if let Some(error) = error {
                p.error role="alert" #login-error { (error) }
            }
            form method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Token" }
                input #token type="password" name="token" required autocomplete="current-password"
                    autofocus aria-describedby=[error.map(|_| "login-error")];
                button type="submit" { "Sign in" }
            }
        }
    };
    page::bare(status, "Sign in", body)
}

/// Whether a request says it comes from another site: `Sec-Fetch-Site` other than
/// `same-origin` or `none` (typed by the user), or an `Origin` that is neither the public URL's
/// nor the one of the `Host` asked. Requests without either header (old browsers, scripts) are
/// not judged here.
fn cross_site(headers: &HeaderMap, public_url: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.to_str(), Ok("same-origin" | "none"))
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Some(origin) = origin
        .to_str()
        .ok()
        .and_then(|o| reqwest::Url::parse(o).ok())
        .filter(|o| o.origin().is_tuple())
    else {
        // `null` (a sandboxed frame, a redirect across sites) or unreadable.
        return true;
    };
    let public = reqwest::Url::parse(public_url).map(|u| u.origin());
    if public.is_ok_and(|p| p == origin.origin()) {
        return false;
    }
    let authority = match (origin.host_str(), origin.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => return true,
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    !host.is_some_and(|h| h.eq_ignore_ascii_case(&authority))
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // Login CSRF: another site must not sign this browser in with a token of its choosing
    // (its later actions would then be recorded as that token's).
    if cross_site(&headers, &state.config.public_url()) {
        return UiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This sign-in did not come from the console's own page.",
        )
        .into_response();
    }
    let next = safe_next(form.next.as_deref()).to_string();
    let token = form.token.as_deref().map(str::trim).unwrap_or_default();
    if state.auth.operator(token).is_none() {
        return login_form(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That token is not known to this coordinator."),
        );
    }
    let secure = if state.config.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={SESSION_MAX_AGE_S}{secure}",
        URL_SAFE_NO_PAD.encode(token.as_bytes())
    );
    let mut response = page::see_other(&next);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

pub async fn logout(session: Session, Form(form): Form<LogoutForm>) -> Result<Response, UiError> {
    session.check_csrf(form.csrf.as_deref())?;
    let mut response = page::see_other("/ui/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("unwind_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/ui/rollbacks/x")), "/ui/rollbacks/x");
        for evil in [
            "https://evil.example/",
            "//evil.example",
            "/ui//evil",
            "/v1/ects",
            "/ui/\\x",
            "/ui/x\r\nSet-Cookie: a=b",
            "/ui/x\u{7f}",
        ] {
            assert_eq!(safe_next(Some(evil)), "/ui/workflows", "{evil}");
        }
        assert_eq!(safe_next(None), "/ui/workflows");
    }

    #[test]
    fn a_sign_in_from_another_site_is_told_apart() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            h
        };
        let public = "https://unwind.example";
        for same in [
            headers(&[]),
            headers(&[("origin", "https://unwind.example")]),
            headers(&[("origin", "https://unwind.example:443")]),
            headers(&[
                ("origin", "http://10.0.0.1:8080"),
                ("host", "10.0.0.1:8080"),
            ]),
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[("sec-fetch-site", "none")]),
        ] {
            assert!(!cross_site(&same, public), "{same:?}");
        }
        for other in [
            headers(&[("origin", "https://evil.example")]),
            headers(&[("origin", "http://unwind.example")]),
            headers(&[("origin", "null")]),
            headers(&[
                ("origin", "http://10.0.0.1:8080"),
                ("host", "10.0.0.1:9090"),
            ]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
        ] {
            assert!(cross_site(&other, public), "{other:?}");
        }
    }

    #[test]
    fn the_session_token_is_read_back_from_its_cookie() {
        let mut headers = HeaderMap::new();
        let value = format!(
            "other=1; {SESSION_COOKIE}={}",
            URL_SAFE_NO_PAD.encode("tok;en =".as_bytes())
        );
        headers.insert(header::COOKIE, HeaderValue::from_str(&value).unwrap());
        assert_eq!(token_from_cookies(&headers).as_deref(), Some("tok;en ="));
        assert_eq!(token_from_cookies(&HeaderMap::new()), None);
    }
}
