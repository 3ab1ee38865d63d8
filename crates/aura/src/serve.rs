//! `aura serve`: locks the data dir, starts the engine and the HTTP API, and runs the shutdown protocol on
//! SIGTERM/SIGINT.

use crate::config::Config;
use anyhow::Context;
use aura_engine::EngineConfig;
use aura_supervisor::SupervisorConfig;
use std::fs::File;
use std::path::Path;

/// Holds an exclusive `flock` on the data dir for the daemon's lifetime: a second daemon on the same data
/// dir would "recover" (kill) the first one's jobs. Released by the kernel when the file is closed.
struct DataDirLock(#[allow(dead_code)] File);

impl DataDirLock {
    fn acquire(data_dir: &Path) -> anyhow::Result<DataDirLock> {
        let path = data_dir.join("aura.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                anyhow::anyhow!(
                    "another `aura serve` is using the data dir {} (lock held on {})",
                    data_dir.display(),
                    path.display()
                )
            },
        )?;
        Ok(DataDirLock(file))
    }
}

/// A stable id for this data dir, naming its cgroup subtree so that daemons of other data dirs are never touched.
fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("{:x}", (nanos as u64) ^ ((std::process::id() as u64) << 40));
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// The kernel's OOM killer should pick a job (they run at `supervisor.job_oom_score_adj`, 500 by default)
/// before the daemon that would record its outcome. Lowering the score needs CAP_SYS_RESOURCE; without it
/// the daemon keeps the default and says so.
fn protect_from_oom_killer() {
    const DAEMON_OOM_SCORE_ADJ: &str = "-500";
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", DAEMON_OOM_SCORE_ADJ) {
        tracing::warn!(error = %e, "cannot lower the daemon's oom_score_adj; the OOM killer may pick it over a job");
    }
}

/// The daemon's threads run above its jobs (`supervisor.daemon_nice`; the jobs reset to `job_nice`).
fn raise_priority(nice: i32) {
    if let Err(e) = aura_supervisor::renice_daemon(nice) {
        tracing::warn!(nice, error = %e, "cannot raise the daemon's priority; its wake-ups may wait behind busy jobs");
    }
}

/// Creates and locks the data dir and reads its instance id (blocking file work, kept off the async workers).
fn prepare_data_dir(dir: &Path) -> anyhow::Result<(std::path::PathBuf, DataDirLock, String)> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let data_dir = dir.canonicalize().context("cannot resolve the data dir")?;
    let lock = DataDirLock::acquire(&data_dir)?;
    protect_from_oom_killer();
    let instance = instance_id(&data_dir)?;
    Ok((data_dir, lock, instance))
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let (data_dir, _lock, instance) = tokio::task::spawn_blocking({
        let dir = config.data_dir.clone();
        let nice = config.supervisor.daemon_nice;
        move || {
            raise_priority(nice);
            prepare_data_dir(&dir)
        }
    })
    .await??;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;

    let mut supervisor = SupervisorConfig::new(instance);
    supervisor.backend = config.supervisor.backend;
    supervisor.sample_interval = config.supervisor.sample_interval;
    supervisor.log_cap = aura_logs::LogCap::new(config.supervisor.log_cap.bytes())
        .context("invalid supervisor.log_cap")?;
    supervisor.job_oom_score_adj = config.supervisor.job_oom_score_adj;
    supervisor.job_nice = config.supervisor.job_nice;
    supervisor.kill_wait = config.supervisor.kill_wait;
    supervisor.memory_watch_interval = config.supervisor.memory_watch_interval;
    let engine = aura_engine::start(EngineConfig {
        data_dir: data_dir.clone(),
        max_concurrent: config.max_concurrent,
        standby: config.standby_jobs,
        admission: config.admission.to_engine(),
        guards: config.guards.clone(),
        diagnostics: config.diagnostics.clone(),
        host_interval: config.metrics.interval,
        host_history: config.metrics.history,
        requeue_on_shutdown: config.requeue_on_shutdown,
        supervisor,
    })
    .await
    .context("cannot start the engine")?;

    let status = engine.status().await?;
    tracing::info!(
        data_dir = %data_dir.display(),
        listen = %address,
        backend = %status.backend,
        max_concurrent = status.max_concurrent,
        "aura serve ready"
    );
    // On stdout, for people and for scripts that wait for the daemon to be up.
    println!("aura serve: data dir {}", data_dir.display());
    println!(
        "aura serve: backend {} ({})",
        status.backend, status.backend_detail
    );
    println!("aura serve: listening on http://{address}");

    let router = aura_server::router(
        engine.clone(),
        aura_server::ApiConfig {
            max_body_bytes: config.api.max_body.bytes() as usize,
            ..Default::default()
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(aura_server::serve(listener, router, async move {
        let _ = stop_rx.await;
    }));

    let signal = wait_for_signal().await?;
    tracing::info!(signal, "shutting down: no new jobs, stopping running ones");
    // The engine first: it refuses new submissions at once and stops every tree; the API keeps answering
    // reads meanwhile, then stops.
    engine.shutdown().await.context("engine shutdown failed")?;
    let _ = stop_tx.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(2), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP server did not finish in-flight requests within 2s"),
    }
    tracing::info!("shutdown complete");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
