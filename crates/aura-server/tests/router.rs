//! The router with every security layer in front of it, driven without a socket against a real engine
//! (store in a temp dir, process-group supervisor).

use aura_server::auth::{Principal, Scope, TokenHash, Tokens};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use std::time::Duration;
use tower::ServiceExt;

const PORT: u16 = 7411;
const TOKEN: &str = "router-test-token";

async fn engine(dir: &std::path::Path) -> aura_engine::EngineHandle {
    let mut supervisor = aura_supervisor::SupervisorConfig::new(format!(
        "router-{}-{}",
        std::process::id(),
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    supervisor.backend = aura_supervisor::BackendChoice::ProcessGroup;
    aura_engine::start(aura_engine::EngineConfig {
        data_dir: dir.to_path_buf(),
        max_concurrent: 1,
        standby: 0,
        admission: aura_engine::AdmissionConfig {
            detect_gpus: false,
            ..Default::default()
        },
        guards: aura_engine::GuardConfig {
            enabled: false,
            ..Default::default()
        },
        diagnostics: Default::default(),
        media: Default::default(),
        host_interval: Duration::from_secs(5),
        host_history: 2,
        requeue_on_shutdown: false,
        supervisor,
        secrets: Default::default(),
        shutdown_grace: Duration::from_secs(30),
        quarantine_after: 2,
        store_reserve: 2 << 20,
        foreign_trees: false,
    })
    .await
    .expect("engine starts")
}

fn tokens() -> Tokens {
    let mut tokens = Tokens::default();
    tokens
        .add(
            TokenHash::of(TOKEN),
            Principal {
                name: "tester".into(),
                scope: Scope::Admin,
                max_queued: None,
            },
        )
        .expect("a valid token");
    tokens
}

fn request(method: Method, path: &str, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, format!("127.0.0.1:{PORT}"));
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::empty()).expect("a valid request")
}

/// A method a route does not have is answered as every other error is: a problem document with a
/// stable code, and the `Allow` header routing adds.
#[tokio::test]
async fn a_wrong_method_is_a_problem_with_allow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine(dir.path()).await;
    let router = aura_server::router(engine.clone(), aura_server::ApiConfig::new(PORT, tokens()));
    for (method, path, allow) in [
        (Method::PUT, "/api/jobs", "POST,GET,HEAD"),
        (Method::DELETE, "/api/jobs/1", "GET,HEAD"),
        (Method::GET, "/api/leases/1", "DELETE"),
    ] {
        let response = router
            .clone()
            .oneshot(request(method.clone(), path, Some(TOKEN)))
            .await
            .expect("infallible");
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let headers = response.headers();
        assert_eq!(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{method} {path}"
        );
        assert_eq!(
            headers.get(header::ALLOW).and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("a body");
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(problem["code"], "method_not_allowed", "{problem}");
        assert_eq!(problem["status"], 405, "{problem}");
        assert_eq!(problem["type"], "/problems/method_not_allowed", "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(method.as_str()) && d.contains(path)),
            "{problem}"
        );
    }
    // The guard still runs first: a foreign Host is refused before routing.
    let mut foreign = request(Method::PUT, "/api/jobs", Some(TOKEN));
    foreign.headers_mut().insert(
        header::HOST,
        "evil.example".parse().expect("a header value"),
    );
    let response = router.clone().oneshot(foreign).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // And a route's own method still reaches its handler (authenticated).
    let response = router
        .clone()
        .oneshot(request(Method::GET, "/api/jobs", Some(TOKEN)))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    engine.shutdown().await.expect("clean shutdown");
}
