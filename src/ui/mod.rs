//! The operator console at `/ui`: server-rendered HTML and SVG (maud), one small script for the
//! live rollback page, no build step and nothing fetched from elsewhere, so it works offline.
//!
//! It signs in with an operator token (a login form puts it in an http-only, same-site cookie),
//! reads with the `reader` role and acts with `operator`, through the same functions as the API
//! (rollback requests, decisions, escalation resolution), so both behave alike.

mod assets;
mod page;
mod rollbacks;
mod session;
mod status;
mod svg;
mod workflows;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::api::AppState;

pub use page::{console_path, see_other};
pub use session::{SESSION_COOKIE, csrf_token};

/// Everything under `/ui`.
pub fn router() -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(|| async { page::see_other("/ui/workflows") }))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/assets/{name}", get(assets::serve))
        .route("/workflows", get(workflows::list))
        .route("/workflows/{wid}", get(workflows::show))
        .route("/ects/{jti}", get(workflows::ect))
        .route("/rollbacks", get(rollbacks::list).post(rollbacks::create))
        .route("/rollbacks/{id}", get(rollbacks::show))
        .route("/rollbacks/{id}/events", get(rollbacks::events))
        .route("/rollbacks/{id}/decision", post(rollbacks::decide))
        .route("/escalations", get(status::escalations))
        .route("/escalations/{id}/resolve", post(status::resolve))
        .route("/circuits", get(status::circuits))
        .route("/cascades", get(status::cascades))
        .fallback(not_found);
    Router::new()
        .nest("/ui", pages)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                 connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
}

async fn not_found() -> Response {
    page::UiError::not_found("There is no such page in the console.").into_response()
}
