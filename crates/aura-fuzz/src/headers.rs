//! The `headers` target: the checks every request passes before routing (`aura_server::check_request`:
//! sizes, `Host`, `Origin`, body type) and the bearer token of its `Authorization` header
//! (`auth::bearer`, `Tokens::authenticate`), on requests built from the bytes as the server sees them.

use aura_server::auth::{
    bearer, valid_caller_name, valid_token_name, Principal, Scope, TokenConfig, TokenHash, Tokens,
};
use aura_server::prometheus::Format;
use aura_server::{check_request, ErrorCode, SecurityConfig};
use http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use std::sync::{Arc, OnceLock};

/// The port of `aura serve`'s default listen address.
const PORT: u16 = 7411;
/// What a daemon on `PORT` accepts as `Host` (`SecurityConfig::loopback_hosts`), written out here so that
/// the target checks the list too.
const ALLOWED_HOSTS: [&[u8]; 3] = [b"localhost:7411", b"127.0.0.1:7411", b"[::1]:7411"];
const MAX_URI_BYTES: usize = 8192;
const MAX_HEADER_BYTES: usize = 16384;
/// The one token the daemon of this target accepts.
const KNOWN_TOKEN: &str = "aura_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const KNOWN_NAME: &str = "fuzz-admin";

/// The checks of a daemon with its defaults on port 7411 (no extra hosts or origins) and one token.
fn security() -> &'static SecurityConfig {
    static CONFIG: OnceLock<SecurityConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let tokens = Tokens::new(&[TokenConfig {
            name: KNOWN_NAME.into(),
            hash: TokenHash::of(KNOWN_TOKEN),
            scopes: vec![Scope::Admin],
            max_queued: None,
        }])
        .expect("one valid token");
        assert_eq!(
            tokens.authenticate(KNOWN_TOKEN).as_deref(),
            Some(&Principal {
                name: KNOWN_NAME.into(),
                scope: Scope::Admin,
                max_queued: None,
            }),
            "the configured token is not accepted"
        );
        let allowed_hosts = SecurityConfig::loopback_hosts(PORT);
        let listed: Vec<&[u8]> = allowed_hosts.iter().map(|h| h.as_bytes()).collect();
        assert_eq!(
            listed, ALLOWED_HOSTS,
            "the loopback hosts of port {PORT} changed"
        );
        SecurityConfig {
            tokens: Arc::new(tokens),
            allowed_hosts,
            allowed_origins: Vec::new(),
            public_metrics: false,
            max_uri_bytes: MAX_URI_BYTES,
            max_header_bytes: MAX_HEADER_BYTES,
        }
    })
}

/// Reads `data` as a request head: a first line `METHOD URI [anything]`, then `name: value` lines (split
/// at the first `:`, the value trimmed of spaces and tabs as HTTP/1.1 parsers do; `\r\n` or `\n`). A
/// request line `http` refuses ends the input; a header line it refuses is left out. Then checks:
/// - `check_request` gives exactly the verdict of an independent model of its promises, in its order:
///   a request target (path and query) over 8192 bytes is `uri_too_long`; else headers over 16384 bytes
///   (names, values, 4 per line) are `headers_too_large`; else a `Host` (the first header, or the
///   authority of an absolute-form target when there is none) other than `localhost:7411`,
///   `127.0.0.1:7411` or `[::1]:7411` (in any case) is always `host_not_allowed`; else an `Origin`
///   other than `http://<host>` or `https://<host>` (no origins configured) is always
///   `origin_not_allowed`; else `POST /api/uploads` is accepted whatever its body; else a request
///   that carries a body (`Transfer-Encoding`, or a
///   `Content-Length` above 0) whose `Content-Type` essence is not `application/json` is always
///   `unsupported_media_type`, one with a JSON content type (all visible ASCII) or with neither body nor
///   content type is accepted (a `Content-Length` such as `00` or `abc`, or a content type without a
///   body, may go either way);
/// - `bearer` on every `Authorization` value (and on the whole input) returns a token only for
///   `Bearer <token>`: the scheme in any case, one or more spaces, a non-empty token without spaces,
///   surrounding whitespace ignored; and does return it for such a value built from the input;
/// - `authenticate` accepts exactly the known token, as its principal;
/// - `/metrics`' format negotiation (`prometheus::Format::negotiate`) on every `Accept` value (and on the
///   whole input) answers OpenMetrics only where the value names `application/openmetrics-text`, and
///   does for that media type alone.
pub fn headers(data: &[u8]) {
    check_bearer(data);
    check_accept(&String::from_utf8_lossy(data));
    let Some(request) = request(data) else {
        return;
    };
    let config = security();
    let verdict = check_request(config, &request);
    let expected = model(&request);
    let ok = match (&verdict, expected) {
        (Ok(()), Expected::Ok | Expected::OkOrUnsupported) => true,
        (Err(e), Expected::Refused(code)) => e.code == code,
        (Err(e), Expected::OkOrUnsupported) => e.code == ErrorCode::UnsupportedMediaType,
        _ => false,
    };
    assert!(
        ok,
        "check_request gave {:?}, expected {expected:?}\n  request: {} {} {:?}",
        verdict.as_ref().map_err(|e| (e.code, &e.detail)),
        request.method(),
        request.uri(),
        request.headers()
    );
    for value in request.headers().get_all(header::AUTHORIZATION) {
        check_bearer(value.as_bytes());
    }
    for value in request.headers().get_all(header::ACCEPT) {
        check_accept(&String::from_utf8_lossy(value.as_bytes()));
    }
}

fn check_accept(accept: &str) {
    let chosen = Format::negotiate(Some(accept));
    if chosen == Format::OpenMetrics {
        assert!(
            accept
                .to_ascii_lowercase()
                .contains("application/openmetrics-text"),
            "OpenMetrics chosen for Accept {accept:?}"
        );
    }
    // Its own range at full quality wins over whatever else the client lists.
    let named = format!("{accept},application/openmetrics-text");
    assert_eq!(
        Format::negotiate(Some(&named)),
        Format::OpenMetrics,
        "Accept {named:?}"
    );
}

/// The request head in `data`, as `http` builds it; `None` when it refuses the request line.
fn request(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let first = lines.next()?;
    let mut parts = first.splitn(3, |&b| b == b' ');
    let method = Method::from_bytes(parts.next()?).ok()?;
    let uri = Uri::try_from(parts.next()?).ok()?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let Ok(name) = HeaderName::from_bytes(&line[..colon]) else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(trim_ows(&line[colon + 1..])) else {
            continue;
        };
        request.headers_mut().append(name, value);
    }
    Some(request)
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

#[derive(Clone, Copy, Debug)]
enum Expected {
    Ok,
    Refused(ErrorCode),
    /// A request whose body is unclear (a `Content-Length` such as `00` or `abc`, a content type without
    /// a body):
    /// refusing it as not JSON is as good as accepting it.
    OkOrUnsupported,
}

/// What `check_request` promises for `request`, from the request alone (bytes, not `to_str`).
fn model(request: &Request<()>) -> Expected {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Expected::Refused(ErrorCode::UriTooLong);
    }
    let headers = request.headers();
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.as_bytes().len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        return Expected::Refused(ErrorCode::HeadersTooLarge);
    }
    let host = match headers.get(header::HOST) {
        Some(host) => host.as_bytes().to_ascii_lowercase(),
        None => match request.uri().authority() {
            Some(authority) => authority.as_str().as_bytes().to_ascii_lowercase(),
            None => return Expected::Refused(ErrorCode::HostNotAllowed),
        },
    };
    if !ALLOWED_HOSTS.contains(&host.as_slice()) {
        return Expected::Refused(ErrorCode::HostNotAllowed);
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.as_bytes().to_ascii_lowercase();
        let own = [&b"http://"[..], b"https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(*scheme) == Some(host.as_slice()));
        if !own {
            return Expected::Refused(ErrorCode::OriginNotAllowed);
        }
    }
    // An upload's body is a file: any type, or none said.
    if request.method() == Method::POST && request.uri().path() == "/api/uploads" {
        return Expected::Ok;
    }
    let content_type = headers.get(header::CONTENT_TYPE);
    // Bytes outside visible ASCII anywhere in the value (obs-text, allowed in a parameter) make it
    // unreadable to the check, which refuses it: as good as any other refusal.
    let json = content_type.is_some_and(|value| {
        let essence = value.as_bytes().split(|&b| b == b';').next().unwrap_or(b"");
        trim_ows(essence).eq_ignore_ascii_case(b"application/json") && value.as_bytes().is_ascii()
    });
    if json {
        return Expected::Ok;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| match v.as_bytes() {
            b"0" => Length::Zero,
            digits
                if digits.iter().all(u8::is_ascii_digit) && digits.iter().any(|&d| d != b'0') =>
            {
                Length::Positive
            }
            _ => Length::Unclear,
        });
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    match (chunked, length, content_type) {
        (true, _, _) | (_, Some(Length::Positive), _) => {
            Expected::Refused(ErrorCode::UnsupportedMediaType)
        }
        (false, None | Some(Length::Zero), None) => Expected::Ok,
        _ => Expected::OkOrUnsupported,
    }
}

/// A `Content-Length` value (the first; hyper refuses a request whose values disagree), already trimmed.
#[derive(Clone, Copy)]
enum Length {
    Zero,
    Positive,
    /// `00`, `abc`, `5, 5`: no clear statement either way.
    Unclear,
}

/// `valid_caller_name` (a forwarded request's `X-Aura-Forwarded-For`) on any text: what it accepts is at
/// most one `@` between two token names, and a token name is one.
fn check_caller_name(value: &[u8]) {
    let Ok(text) = std::str::from_utf8(value) else {
        return;
    };
    if valid_caller_name(text) {
        let parts: Vec<&str> = text.split('@').collect();
        assert!(
            parts.len() <= 2 && parts.iter().all(|p| valid_token_name(p)),
            "valid_caller_name({text:?}) accepted it"
        );
    }
    if valid_token_name(text) {
        assert!(
            valid_caller_name(text),
            "the token name {text:?} is no caller name"
        );
    }
}

/// `bearer` and `authenticate` on one `Authorization` value (or any bytes).
fn check_bearer(value: &[u8]) {
    check_caller_name(value);
    let tokens = &security().tokens;
    match bearer(value) {
        Some(token) => {
            let text =
                std::str::from_utf8(value).expect("a token came out of bytes that are not UTF-8");
            let t = text.trim();
            let well_formed = t.len() > 7
                && t.as_bytes()[..6].eq_ignore_ascii_case(b"bearer")
                && t.as_bytes()[6] == b' '
                && t[7..].trim() == token
                && !token.is_empty()
                && !token.contains(' ')
                && token.trim() == token;
            assert!(well_formed, "bearer({text:?}) gave the token {token:?}");
            check_authenticate(tokens, token);
        }
        None => {
            if let Ok(text) = std::str::from_utf8(value) {
                check_authenticate(tokens, text);
            }
        }
    }
    // The converse: a well-formed header from the input's visible text is read.
    let token: String = String::from_utf8_lossy(value)
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(128)
        .collect();
    if !token.is_empty() {
        let scheme = ["Bearer", "bearer", "BEARER", "bEaReR"][value.len() % 4];
        let spaces = " ".repeat(1 + value.len() % 3);
        for header in [
            format!("{scheme}{spaces}{token}"),
            format!(" {scheme} {token}\t"),
        ] {
            assert_eq!(
                bearer(header.as_bytes()),
                Some(token.as_str()),
                "bearer({header:?}) did not give the token"
            );
        }
    }
}

fn check_authenticate(tokens: &Tokens, token: &str) {
    let principal = tokens.authenticate(token);
    if token == KNOWN_TOKEN {
        assert_eq!(
            principal.as_deref().map(|p| (p.name.as_str(), p.scope)),
            Some((KNOWN_NAME, Scope::Admin)),
            "the known token is not accepted as its principal"
        );
    } else {
        assert!(
            principal.is_none(),
            "authenticate accepted {token:?}, which is not the known token"
        );
    }
}
