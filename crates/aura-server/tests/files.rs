//! Files in and out through the router, against a real engine (no socket): uploads under their hash,
//! the inputs check at submit, a job's listing and downloads with ranges, validators and refusals.

mod common;

use aura_server::auth::{Scope, Tokens};
use axum::body::Body;
use axum::http::{header, Method, Request, Response, StatusCode};
use sha2::Digest;
use std::path::Path;
use tower::ServiceExt;

const PORT: u16 = 7411;
const ADMIN: &str = "files-test-admin";
const READER: &str = "files-test-reader";

fn tokens() -> Tokens {
    common::tokens(&[
        (ADMIN, "admin", Scope::Admin),
        (READER, "reader", Scope::Read),
    ])
}

async fn send(
    router: &axum::Router,
    method: Method,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Response<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, format!("127.0.0.1:{PORT}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Body::from(body)).expect("a request");
    router.clone().oneshot(request).await.expect("infallible")
}

async fn bytes(response: Response<Body>) -> Vec<u8> {
    axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .expect("a body")
        .to_vec()
}

async fn json(response: Response<Body>) -> serde_json::Value {
    serde_json::from_slice(&bytes(response).await).unwrap_or(serde_json::Value::Null)
}

fn header_of(response: &Response<Body>, name: header::HeaderName) -> &str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Names in `uploads/` (partial files included).
fn uploads(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("uploads"))
        .map(|entries| {
            entries
                .map(|e| {
                    e.expect("an entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn uploads_are_stored_once_under_their_hash_and_inputs_must_name_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = common::engine("files-up", dir.path()).await;
    let router = aura_server::router(engine.clone(), aura_server::ApiConfig::new(PORT, tokens()));
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let id = format!("{:x}", sha2::Sha256::digest(&data));
    let post = |token, query: &'static str, body: Vec<u8>| {
        let router = router.clone();
        async move {
            let length = body.len().to_string();
            let headers = [("content-type", "video/mp4"), ("content-length", &*length)];
            let path = format!("/api/uploads{query}");
            let response = send(&router, Method::POST, &path, token, &headers, body).await;
            (response.status(), json(response).await)
        }
    };
    let (status, info) = post(ADMIN, "", data.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(info["id"], id.as_str());
    assert_eq!(info["size"], data.len());
    assert_eq!(info["existing"], false);
    let (status, info) = post(ADMIN, "", data.clone()).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["existing"], true);
    // A read token may not upload; a cap is a 413 before anything is written.
    let (status, problem) = post(READER, "", b"x".to_vec()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["code"], "insufficient_scope");
    let (status, problem) = post(ADMIN, "?max=1M", data.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert_eq!(problem["code"], "payload_too_large");
    let (status, problem) = post(ADMIN, "?max=lots", data.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(uploads(dir.path()), std::slice::from_ref(&id));

    // Inputs name uploads the daemon has.
    let submit = |inputs: serde_json::Value| {
        let router = router.clone();
        async move {
            let body = serde_json::json!({"program": "true", "inputs": inputs}).to_string();
            let headers = [("content-type", "application/json")];
            let response = send(
                &router,
                Method::POST,
                "/api/jobs",
                ADMIN,
                &headers,
                body.into_bytes(),
            )
            .await;
            (response.status(), json(response).await)
        }
    };
    let (status, problem) = submit(serde_json::json!({"in.bin": "ab".repeat(32)})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["code"], "unknown_upload");
    let (status, job) = submit(serde_json::json!({"in.bin": id})).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    engine.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_jobs_files_are_listed_and_served_by_range_never_through_a_symlink() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = common::engine("files-down", dir.path()).await;
    let router = aura_server::router(engine.clone(), aura_server::ApiConfig::new(PORT, tokens()));
    let spec = aura_model::JobSpec::new("true", Vec::<String>::new());
    let job = engine.submit(spec, None).await.expect("submit").id;
    engine
        .wait(job, std::time::Duration::from_secs(30))
        .await
        .expect("wait");
    // What the job left (written here: `true` writes nothing, and an empty directory is recycled).
    let work = dir.path().join("work").join(job.to_string());
    std::fs::create_dir_all(work.join("sub")).expect("mkdir");
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    std::fs::write(work.join("out.bin"), &data).expect("write");
    std::fs::write(work.join("sub/x.txt"), b"text").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", work.join("passwd")).expect("symlink");
    std::os::unix::fs::symlink("/etc", work.join("etc")).expect("symlink");

    let get = |path: String, headers: Vec<(&'static str, String)>| {
        let router = router.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(&router, Method::GET, &path, READER, &headers, Vec::new()).await
        }
    };
    let files = json(get(format!("/api/jobs/{job}/files"), vec![]).await).await;
    let listed: Vec<(String, String)> = files["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default().to_owned(),
                f["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("etc", "symlink"),
        ("out.bin", "file"),
        ("passwd", "symlink"),
        ("sub", "dir"),
        ("sub/x.txt", "file"),
    ];
    assert_eq!(
        listed,
        expected.map(|(p, k)| (p.to_owned(), k.to_owned())),
        "{files}"
    );
    assert_eq!(files["source"], "work");

    let file = format!("/api/jobs/{job}/files/out.bin");
    let whole = get(file.clone(), vec![]).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(header_of(&whole, header::CONTENT_LENGTH), "1000");
    assert_eq!(header_of(&whole, header::ACCEPT_RANGES), "bytes");
    assert_eq!(header_of(&whole, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(
        header_of(&whole, header::CONTENT_DISPOSITION),
        "attachment; filename=\"out.bin\"; filename*=UTF-8''out.bin"
    );
    let etag = header_of(&whole, header::ETAG).to_owned();
    assert!(etag.starts_with('"') && etag.len() > 4, "{etag}");
    assert!(!header_of(&whole, header::LAST_MODIFIED).is_empty());
    assert_eq!(bytes(whole).await, data);

    for (range, status, content_range, body) in [
        ("bytes=100-199", 206, "bytes 100-199/1000", &data[100..200]),
        ("bytes=-10", 206, "bytes 990-999/1000", &data[990..]),
        ("bytes=5-", 206, "bytes 5-999/1000", &data[5..]),
        ("bytes=0-1,5-6", 200, "", &data[..]),
    ] {
        let response = get(file.clone(), vec![("range", range.to_owned())]).await;
        assert_eq!(response.status().as_u16(), status, "{range}");
        assert_eq!(
            header_of(&response, header::CONTENT_RANGE),
            content_range,
            "{range}"
        );
        assert_eq!(bytes(response).await, body, "{range}");
    }
    let refused = get(file.clone(), vec![("range", "bytes=1000-".into())]).await;
    assert_eq!(refused.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header_of(&refused, header::CONTENT_RANGE), "bytes */1000");
    assert_eq!(json(refused).await["code"], "range_not_satisfiable");
    // If-Range: the range only while the file is the same.
    let same = vec![
        ("range", "bytes=0-9".to_owned()),
        ("if-range", etag.clone()),
    ];
    assert_eq!(
        get(file.clone(), same).await.status(),
        StatusCode::PARTIAL_CONTENT
    );
    let other = vec![
        ("range", "bytes=0-9".to_owned()),
        ("if-range", "\"x\"".to_owned()),
    ];
    let whole = get(file.clone(), other).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(bytes(whole).await.len(), 1000);
    // HEAD: the headers alone.
    let head = send(&router, Method::HEAD, &file, READER, &[], Vec::new()).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header_of(&head, header::CONTENT_LENGTH), "1000");
    assert!(bytes(head).await.is_empty());
    let nested = get(format!("/api/jobs/{job}/files/sub%2Fx.txt"), vec![]).await;
    assert_eq!(
        header_of(&nested, header::CONTENT_TYPE),
        "text/plain; charset=utf-8"
    );
    assert_eq!(bytes(nested).await, b"text");

    for (path, status, code) in [
        ("passwd", 403, "forbidden_path"),
        ("etc/passwd", 403, "forbidden_path"),
        ("../../aura.db", 403, "forbidden_path"),
        ("%2e%2e/%2e%2e/aura.db", 403, "forbidden_path"),
        ("sub/..%2F..%2Fx", 403, "forbidden_path"),
        ("sub", 403, "forbidden_path"),
        ("missing", 404, "not_found"),
    ] {
        let response = get(format!("/api/jobs/{job}/files/{path}"), vec![]).await;
        let status_got = response.status().as_u16();
        let problem = json(response).await;
        assert_eq!(
            (status_got, problem["code"].as_str()),
            (status, Some(code)),
            "{path}: {problem}"
        );
    }
    let problem = json(get("/api/jobs/999/files".into(), vec![]).await).await;
    assert_eq!(problem["code"], "not_found", "{problem}");
    std::fs::remove_dir_all(&work).expect("rm");
    let problem = json(get(format!("/api/jobs/{job}/files"), vec![]).await).await;
    assert_eq!(problem["code"], "not_found", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("has no files")),
        "{problem}"
    );
    engine.shutdown().await.expect("clean shutdown");
}
