//! The web dashboard: `GET /` and `GET /assets/{*path}`, files compiled into the binary (no build step,
//! nothing read from disk at run time), and the session routes it signs in with (`session`). The static
//! routes are public — the page holds no data; everything it shows comes from the API, authenticated by
//! the session cookie — but pass the guard stage like every route (`Host`, `Origin`).
//!
//! Every answer has a strong `ETag` (a hash of the file, computed once) and `Cache-Control: no-cache`:
//! the browser keeps its copy and revalidates it, and a new binary's files replace the old ones at the
//! next load. The page's `Content-Security-Policy` allows scripts, styles and connections from the
//! daemon's own origin only — no inline script, no `eval`, no framing.

use crate::session::{self, SessionState, Sessions};
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};

/// The page's content security policy. `style-src 'self'` still lets scripts set element styles through
/// the CSSOM (uPlot sizes its canvas that way); it refuses `style` attributes and `<style>` in markup.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// One file of the dashboard.
struct Asset {
    /// Its path under `/assets/` (`index.html` is served at `/`).
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Every file the dashboard has, compiled in.
const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../assets/index.html"),
    },
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/app.js"),
    },
    Asset {
        path: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/app.css"),
    },
    Asset {
        path: "vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/vendor/uPlot.min.css"),
    },
    Asset {
        path: "vendor/uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../assets/vendor/uPlot.LICENSE"),
    },
];

/// The `ETag` of each asset, in `ASSETS`' order: the first 128 bits of its SHA-256, computed at the
/// first request and kept (the files never change while the binary runs).
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.bytes);
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                HeaderValue::from_str(&format!("\"{hex}\""))
                    .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
            })
            .collect()
    })
}

/// The dashboard's routes and the session routes, for `routes::router` to merge before its authorize
/// layer (which `SecurityConfig::needed` lets through: the static files and the sign-in are public).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    sessions: Arc<Sessions>,
    tokens: Arc<crate::auth::Tokens>,
) -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/assets/{*path}", get(asset))
        .route(
            "/api/session",
            axum::routing::post(session::sign_in)
                .get(session::current)
                .delete(session::sign_out),
        )
        .with_state(SessionState { sessions, tokens })
}

/// `GET /`: the dashboard's page.
async fn page(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// `GET /assets/{*path}`: one of the dashboard's files; 404 for anything else.
async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.path == path) {
        Some(index) => serve(index, &headers),
        None => crate::error::ApiError::new(crate::error::ErrorCode::NotFound, "no such asset")
            .into_response(),
    }
}

/// Answers asset `index`: 304 when the client's `If-None-Match` names its `ETag`, else the file.
fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = asset.bytes.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.path == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_quoted_etag_and_a_type() {
        let tags = etags();
        assert_eq!(tags.len(), ASSETS.len());
        for (asset, tag) in ASSETS.iter().zip(tags) {
            let text = tag.to_str().expect("text");
            assert!(
                text.len() == 34 && text.starts_with('"') && text.ends_with('"'),
                "{text}"
            );
            assert!(!asset.bytes.is_empty(), "{}", asset.path);
            assert!(asset.content_type.contains("charset=utf-8"));
        }
        let mut unique: Vec<&HeaderValue> = tags.iter().collect();
        unique.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        unique.dedup();
        assert_eq!(unique.len(), ASSETS.len());
    }

    #[test]
    fn a_matching_if_none_match_is_304_and_the_page_has_its_policy() {
        let mut headers = HeaderMap::new();
        let page = serve(0, &headers);
        assert_eq!(page.status(), StatusCode::OK);
        let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("text");
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(page.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(page.headers()[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-cache");
        let etag = page.headers()[header::ETAG].clone();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", {}", etag.to_str().expect("text")))
                .expect("a value"),
        );
        let again = serve(0, &headers);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag);
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(serve(0, &headers).status(), StatusCode::OK);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[0].bytes).expect("UTF-8");
        // Every <script> loads a file; no element carries an inline handler or style.
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap_or(0)];
            assert!(tag.contains("src="), "inline script: {tag}");
        }
        for banned in [" onclick=", " onload=", " style=", "<style"] {
            assert!(!html.contains(banned), "{banned}");
        }
    }
}
