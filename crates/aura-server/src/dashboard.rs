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

/// What is computed once per asset, when the router is built (the files never change while the binary runs):
/// its `ETag` (the first 128 bits of its SHA-256) and its gzip form with that form's own `ETag` — a
/// strong validator names one representation, and the two differ in bytes.
struct Prepared {
    etag: HeaderValue,
    gzip: Vec<u8>,
    gzip_etag: HeaderValue,
}

fn prepared() -> &'static [Prepared] {
    static PREPARED: OnceLock<Vec<Prepared>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.bytes);
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                let tag = |suffix: &str| {
                    HeaderValue::from_str(&format!("\"{hex}{suffix}\""))
                        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
                };
                Prepared {
                    etag: tag(""),
                    gzip: gzip(asset.bytes),
                    gzip_etag: tag("-gz"),
                }
            })
            .collect()
    })
}

/// `bytes` gzip-compressed at the best level (once per asset; the page weighs about a third as much).
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// Whether the client takes gzip: a `gzip` coding in `Accept-Encoding` not refused by `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// The dashboard's routes and the session routes, for `routes::router` to merge before its authorize
/// layer (which `SecurityConfig::needed` lets through: the static files and the sign-in are public).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    sessions: Arc<Sessions>,
    tokens: Arc<crate::auth::Tokens>,
) -> Router<S> {
    // Hashes and gzip forms once, while the router is built: not on the first request's worker thread.
    prepared();
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

/// Answers asset `index`, gzip-compressed where the client takes it: 304 when the client's
/// `If-None-Match` names the answer's `ETag`, else the file.
fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let prepared = &prepared()[index];
    let compressed = accepts_gzip(headers) && prepared.gzip.len() < asset.bytes.len();
    let etag = if compressed {
        &prepared.gzip_etag
    } else {
        &prepared.etag
    };
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
        let body: &'static [u8] = if compressed {
            &prepared.gzip
        } else {
            asset.bytes
        };
        let mut response = body.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if compressed {
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
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
        let tags: Vec<HeaderValue> = prepared().iter().map(|p| p.etag.clone()).collect();
        assert_eq!(tags.len(), ASSETS.len());
        for (asset, tag) in ASSETS.iter().zip(&tags) {
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
    fn gzip_is_served_to_who_takes_it_and_unpacks_to_the_file() {
        use std::io::Read;
        for (accept, gzipped) in [
            ("gzip, deflate, br", true),
            ("br;q=1.0, gzip;q=0.5", true),
            ("GZIP", true),
            ("gzip;q=0", false),
            ("deflate", false),
            ("", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(accept).expect("a value"),
            );
            assert_eq!(accepts_gzip(&headers), gzipped, "{accept:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        for (index, asset) in ASSETS.iter().enumerate() {
            let answer = serve(index, &headers);
            if answer.headers().get(header::CONTENT_ENCODING).is_none() {
                continue; // a file too small to gain from it
            }
            assert_eq!(answer.headers()[header::VARY], "accept-encoding");
            assert_ne!(answer.headers()[header::ETAG], prepared()[index].etag);
            let mut unpacked = Vec::new();
            flate2::read::GzDecoder::new(prepared()[index].gzip.as_slice())
                .read_to_end(&mut unpacked)
                .expect("valid gzip");
            assert_eq!(unpacked, asset.bytes, "{}", asset.path);
        }
        let js = ASSETS
            .iter()
            .position(|a| a.path == "app.js")
            .expect("app.js");
        assert!(prepared()[js].gzip.len() < ASSETS[js].bytes.len() / 2);
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
