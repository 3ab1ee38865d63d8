//! The HTTP API: bad input gets a clear problem and changes nothing; listing filters and pages.

use super::*;

async fn post_raw(url: &str, body: Vec<u8>) -> (u16, serde_json::Value, String) {
    let resp = authed(url)
        .post(format!("{url}/api/jobs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json, ctype)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_problem_and_changes_nothing() {
    let daemon = Daemon::start(&[]);
    let long_arg = "x".repeat(200 * 1024);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "empty program",
            br#"{"program":""}"#.to_vec(),
            422,
            "the program is empty",
        ),
        (
            "missing program",
            br#"{"program":"no-such-program-xyz"}"#.to_vec(),
            422,
            "no-such-program-xyz",
        ),
        (
            "unknown field",
            br#"{"program":"true","bogus":1}"#.to_vec(),
            422,
            "unknown field `bogus`",
        ),
        (
            "negative timeout",
            br#"{"program":"true","timeout":-1}"#.to_vec(),
            422,
            "non-negative",
        ),
        (
            "zero timeout",
            br#"{"program":"true","timeout":"0s"}"#.to_vec(),
            422,
            "greater than zero",
        ),
        (
            "non-UTF-8",
            b"{\"program\":\"echo\",\"args\":[\"caf\xe9\"]}".to_vec(),
            400,
            "invalid JSON",
        ),
        ("syntax", b"{\"program\":".to_vec(), 400, "invalid JSON"),
        (
            "over-long argument",
            format!(r#"{{"program":"echo","args":["{long_arg}"]}}"#).into_bytes(),
            422,
            "longer than",
        ),
        (
            "body over limit",
            vec![b' '; 3 * 1024 * 1024],
            413,
            "larger than",
        ),
        (
            "relative cwd",
            br#"{"program":"true","cwd":"rel"}"#.to_vec(),
            422,
            "absolute",
        ),
        (
            "cwd outside the allowed roots",
            br#"{"program":"true","cwd":"/no/such/dir"}"#.to_vec(),
            403,
            "jobs.cwd_roots",
        ),
    ];
    for (name, body, status, needle) in cases {
        let (got, problem, ctype) = post_raw(&daemon.url, body).await;
        assert_eq!(got, status, "{name}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{name}");
        assert_eq!(problem["status"], status, "{name}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(needle),
            "{name}: {detail:?} should mention {needle:?}"
        );
    }
    let page = daemon.client().list(&Default::default()).await.unwrap();
    assert!(
        page.jobs.is_empty(),
        "bad input must not create jobs: {:?}",
        page.jobs
    );

    let client = daemon.client();
    let err = client.get(JobId(999)).await.unwrap_err().to_string();
    assert!(err.contains("job 999 not found"), "{err}");
    let resp = http_get(format!("{}/api/jobs/abc", daemon.url))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = http_get(format!("{}/api/jobs?state=bogus", daemon.url))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let health: serde_json::Value = http_get(format!("{}/healthz", daemon.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_and_pages() {
    let daemon = Daemon::start(&[("AURA_MAX_CONCURRENT", "1")]);
    let client = daemon.client();
    let blocker = submit(&client, &spec("sleep", &["30"])).await;
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.push(submit(&client, &spec("true", &[])).await);
    }
    let q = aura_client::ListQuery {
        states: vec!["queued".into()],
        limit: Some(2),
        ..Default::default()
    };
    let first = client.list(&q).await.unwrap();
    assert_eq!(
        first.jobs.iter().map(|j| j.job.id).collect::<Vec<_>>(),
        vec![queued[4], queued[3]]
    );
    let second = client
        .list(&aura_client::ListQuery {
            after: first.next_after,
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        second.jobs.iter().map(|j| j.job.id).collect::<Vec<_>>(),
        vec![queued[2], queued[1]]
    );
    client.cancel(blocker).await.unwrap();
    for id in queued {
        assert!(outcome(&wait_done(&client, id).await).is_success());
    }
}
