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
    // Running, so that only the five below are queued (a guard may hold it back a moment on a busy machine).
    wait_running(&client, blocker, 1).await;
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
    // The client pages through the rest itself, in the query's order, from its cursor on.
    let rest = client
        .list_all(&aura_client::ListQuery {
            after: second.next_after,
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|j| j.job.id).collect::<Vec<_>>(),
        vec![queued[0]]
    );
    let oldest_first = client
        .list_all(&aura_client::ListQuery {
            oldest_first: true,
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        oldest_first.iter().map(|j| j.job.id).collect::<Vec<_>>(),
        queued
    );
    client.cancel(blocker).await.unwrap();
    for id in queued {
        assert!(outcome(&wait_done(&client, id).await).is_success());
    }
}

/// `GET /api/jobs?label=K=V` (repeatable) and `aura jobs --label K=V`: only jobs carrying every label
/// given, paged like any listing; a label that is not `KEY=VALUE`, or breaks the label rules, is a 400
/// problem that says so, and a CLI error that says the same.
#[tokio::test(flavor = "multi_thread")]
async fn list_filters_by_label_over_the_api_and_the_cli() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let labelled = |labels: &[(&str, &str)]| {
        let mut spec = spec("true", &[]);
        for (k, v) in labels {
            spec.labels.insert((*k).to_owned(), (*v).to_owned());
        }
        spec
    };
    let trailer_encode = submit(
        &client,
        &labelled(&[("project", "trailer"), ("kind", "encode")]),
    )
    .await;
    let trailer_tts = submit(
        &client,
        &labelled(&[("project", "trailer"), ("kind", "tts")]),
    )
    .await;
    submit(
        &client,
        &labelled(&[("project", "feature"), ("kind", "encode")]),
    )
    .await;
    submit(&client, &spec("true", &[])).await;
    let staged = submit(&client, &labelled(&[("team.io/stage", "a=b c")])).await;

    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let listed = |labels: Vec<(String, String)>, limit: Option<u32>, after: Option<JobId>| {
        let client = client.clone();
        async move {
            let page = client
                .list(&aura_client::ListQuery {
                    labels,
                    limit,
                    after,
                    ..Default::default()
                })
                .await
                .expect("list");
            let ids: Vec<JobId> = page.jobs.iter().map(|j| j.job.id).collect();
            (ids, page.next_after)
        }
    };
    let trailer = vec![pair("project", "trailer")];
    assert_eq!(
        listed(trailer.clone(), None, None).await.0,
        [trailer_tts, trailer_encode]
    );
    // Every label must match.
    assert_eq!(
        listed(
            vec![pair("kind", "encode"), pair("project", "trailer")],
            None,
            None
        )
        .await
        .0,
        [trailer_encode]
    );
    // A key with `.` and `/`, a value with `=` and a space, arrive as they were given.
    assert_eq!(
        listed(vec![pair("team.io/stage", "a=b c")], None, None)
            .await
            .0,
        [staged]
    );
    assert!(listed(vec![pair("project", "nope")], None, None)
        .await
        .0
        .is_empty());
    // Pages of one: the label filter holds across the keyset cursor.
    let (first, next) = listed(trailer.clone(), Some(1), None).await;
    assert_eq!(first, [trailer_tts]);
    let (second, next) = listed(trailer.clone(), Some(1), next).await;
    assert_eq!(second, [trailer_encode]);
    assert!(listed(trailer, Some(1), next).await.0.is_empty());

    // The raw form: `label` repeated, `=` inside the value encoded or not.
    let http = authed(&daemon.url);
    let get = |query: &str| {
        let request = http.get(format!("{}/api/jobs?{query}", daemon.url));
        async move {
            let resp = request.send().await.expect("GET /api/jobs");
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body: serde_json::Value = resp.json().await.expect("a JSON answer");
            (status, ctype, body)
        }
    };
    let (status, _, page) = get("label=project%3Dtrailer&label=kind=encode").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["jobs"][0]["id"], trailer_encode.0);
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1));
    for (query, says) in [
        ("label=project", "expected KEY=VALUE"),
        ("label=bad%20key=x", "invalid label name \"bad key\""),
        ("label==trailer", "invalid label name \"\""),
    ] {
        let (status, ctype, problem) = get(query).await;
        assert_eq!(status, 400, "{query}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{query}");
        assert_eq!(problem["code"], "bad_request", "{query}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{query}: {detail}");
    }

    // The CLI: `--label` repeatable, the same jobs.
    let out = daemon.cli(&["jobs", "--label", "project=trailer", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Vec<JobView> = serde_json::from_slice(&out.stdout).expect("aura jobs --json");
    let shown: Vec<JobId> = shown.iter().map(|j| j.job.id).collect();
    assert_eq!(shown, [trailer_tts, trailer_encode]);
    let out = daemon.cli(&[
        "jobs",
        "--label",
        "project=trailer",
        "--label",
        "kind=tts",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Vec<JobView> = serde_json::from_slice(&out.stdout).expect("aura jobs --json");
    assert_eq!(
        shown.iter().map(|j| j.job.id).collect::<Vec<_>>(),
        [trailer_tts]
    );
    // Refused by the daemon (a key no job can carry), and by the CLI itself (not KEY=VALUE).
    for (args, says) in [
        (
            &["jobs", "--label", "bad key=x"][..],
            "invalid label name \"bad key\"",
        ),
        (&["jobs", "--label", "novalue"][..], "is not KEY=VALUE"),
    ] {
        let out = daemon.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed a table");
    }
}
