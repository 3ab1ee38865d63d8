//! The Prometheus and Grafana files in `deploy/` against Debian's Prometheus, in a test binary of its own:
//! the alerting rules pass `promtool check rules` and their unit tests, and a real Prometheus, configured
//! from the example scrape config, scrapes a real daemon that ran jobs with mixed outcomes and then
//! answers every query of the Grafana dashboard with data.

use aura_client::Client;
use aura_model::{JobId, JobSpec};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Daemon;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn promtool(args: &[&str]) {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alerting_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "aura-alerts.yml"]);
    // Syntax only: the example names a token file this machine does not have.
    promtool(&["check", "config", "--syntax-only", "prometheus.yml"]);
    promtool(&["test", "rules", "aura-alerts.test.yml"]);
}

/// A Prometheus server on a temporary TSDB, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus with `deploy/prometheus/prometheus.yml`, its target, token file, rule file and
    /// scrape interval substituted for the daemon under test.
    fn start(daemon: &Daemon) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("aura-token");
        std::fs::write(&token_file, &daemon.token).expect("token file");
        let target = daemon
            .url
            .strip_prefix("http://")
            .expect("an http URL")
            .trim_end_matches('/');
        let template = std::fs::read_to_string(deploy().join("prometheus/prometheus.yml"))
            .expect("deploy/prometheus/prometheus.yml");
        let rules = deploy().join("prometheus/aura-alerts.yml");
        let config = [
            (
                "/etc/prometheus/aura-token",
                token_file.to_str().expect("utf-8"),
            ),
            ("127.0.0.1:7411", target),
            ("scrape_interval: 15s", "scrape_interval: 1s"),
            ("evaluation_interval: 15s", "evaluation_interval: 1s"),
            ("- aura-alerts.yml", &format!("- {}", rules.display())),
        ]
        .iter()
        .fold(template.clone(), |text, (from, to)| {
            assert!(text.contains(from), "{from:?} not in the scrape config");
            text.replace(from, to)
        });
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("config file");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "/usr/bin/prometheus (Debian package prometheus; `cargo xtask test` installs it)",
            );
        Prometheus {
            child,
            url: format!("http://{listen}"),
            _dir: dir,
        }
    }

    /// An instant query's result vector; empty while Prometheus is not up or has nothing.
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Vec<serde_json::Value> {
        let Ok(resp) = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        assert_ne!(body["status"], "error", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Every target expression of the dashboard, with Grafana's variables as Prometheus takes them.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("grafana/aura-dashboard.json"))
        .expect("deploy/grafana/aura-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating variables");
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let Some(targets) = panel["targets"].as_array() else {
            continue;
        };
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} uses the datasource variable",
            panel["title"]
        );
        for target in targets {
            let expr = target["expr"].as_str().expect("a target expression");
            let expr = expr
                .replace("$__rate_interval", "30s")
                .replace("$__interval", "5s")
                .replace("${instance}", ".+")
                .replace("$instance", ".+");
            queries.push((panel["title"].as_str().unwrap_or_default().to_owned(), expr));
        }
    }
    queries
}

async fn submit(client: &Client, program: &str, args: &[&str]) -> JobId {
    client
        .submit(&JobSpec::new(program, args.iter().copied()))
        .await
        .expect("submit")
        .job
        .id
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_answers_every_dashboard_query_from_a_real_daemon() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    let daemon = Daemon::start(&[
        // One job at a time, so that the second job waits in the queue.
        ("AURA_MAX_CONCURRENT", "1"),
        ("AURA_METRICS__INTERVAL", "200ms"),
    ]);
    let prometheus = Prometheus::start(&daemon);
    let client = Client::authorized(&daemon.url, &daemon.token).expect("client");
    let blocker = submit(&client, "sleep", &["1.5"]).await;
    let mut ids = vec![blocker];
    for (program, args) in [
        ("true", &[][..]),
        ("false", &[]),
        ("sh", &["-c", "exit 3"]),
        ("true", &[]),
    ] {
        ids.push(submit(&client, program, args).await);
    }
    for id in &ids {
        client
            .wait(*id, Duration::from_secs(30))
            .await
            .expect("the job finishes");
    }
    // An event stream open while Prometheus scrapes (the subscribers panel).
    let http = reqwest::Client::new();
    let _stream = http
        .get(format!("{}/api/events/stream", daemon.url))
        .bearer_auth(&daemon.token)
        .send()
        .await
        .expect("an event stream");

    // Prometheus scrapes every second; each query is asked until it has data.
    let deadline = Instant::now() + Duration::from_secs(40);
    let up = loop {
        let up = prometheus.query(&http, "up{job=\"aura\"} == 1").await;
        let finished = prometheus
            .query(&http, "aura_jobs_finished_total{outcome=\"failed\"} == 2")
            .await;
        if !up.is_empty() && !finished.is_empty() {
            break up;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the finished jobs (up: {up:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(up.len(), 1, "{up:?}");
    let mut missing = Vec::new();
    for (title, expr) in &queries {
        let result = loop {
            let result = prometheus.query(&http, expr).await;
            if !result.is_empty() || Instant::now() >= deadline {
                break result;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if result.is_empty() {
            missing.push(format!("{title}: {expr}"));
        }
    }
    assert!(missing.is_empty(), "queries without data: {missing:#?}");
    // The counters as Prometheus stored them: exact.
    for (expr, expected) in [
        ("sum(aura_jobs_submitted_total)", 5.0),
        (
            "aura_jobs_finished_total{kind=\"command\",outcome=\"succeeded\"}",
            3.0,
        ),
        (
            "aura_jobs_finished_total{kind=\"command\",outcome=\"failed\"}",
            2.0,
        ),
        ("sum(aura_job_queue_wait_seconds_count)", 5.0),
    ] {
        let result = prometheus.query(&http, expr).await;
        let value: f64 = result
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        assert_eq!(value, expected, "{expr}: {result:?}");
    }
}
