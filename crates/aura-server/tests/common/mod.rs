//! What the router's test binaries share: a real engine on a temp dir (store, process-group supervisor,
//! guards off) and a token set.

use aura_server::auth::{Principal, Scope, TokenHash, Tokens};
use std::time::Duration;

/// A real engine on `dir`, its cgroup-free supervisor named after `test` and the dir.
pub async fn engine(test: &str, dir: &std::path::Path) -> aura_engine::EngineHandle {
    let mut supervisor = aura_supervisor::SupervisorConfig::new(format!(
        "{test}-{}-{}",
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
        warnings: Default::default(),
        // Readiness must not depend on how full the machine's disk is.
        janitor: aura_engine::JanitorConfig {
            low_free_disk: 0.0,
            ..Default::default()
        },
        uploads: Default::default(),
        fleet: None,
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

/// Tokens `(token, name, scope)`.
pub fn tokens(list: &[(&str, &str, Scope)]) -> Tokens {
    let mut tokens = Tokens::default();
    for &(token, name, scope) in list {
        tokens
            .add(
                TokenHash::of(token),
                Principal {
                    name: name.into(),
                    scope,
                    max_queued: None,
                },
            )
            .expect("a valid token");
    }
    tokens
}
