//! `aura serve`: locks the data dir, builds what jobs may do (the sandbox) and who may call the API (the
//! tokens), starts the engine and the HTTP API, and runs the shutdown protocol on SIGTERM/SIGINT.

use anyhow::Context;
use aura::config::{Config, LOCAL_TOKEN_NAME};
use aura::runtime::{self, RuntimeFile, RuntimeInfo};
use aura_engine::EngineConfig;
use aura_server::auth::{Principal, Scope, TokenHash, Tokens};
use aura_supervisor::{JobIdentity, JobSandbox, SupervisorConfig};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
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

/// This data dir's instance: the id naming its cgroup subtree, so that daemons of other data dirs are
/// never touched, and whether the dir turned out to be a copy of another's.
struct Instance {
    id: String,
    /// The `instance-id` file was bound to another directory: this one is a copy (`cp -a`, a restored
    /// backup) or was moved. The id was minted anew, and the job trees its records name are another
    /// daemon's.
    copied: bool,
}

/// The identity of the directory itself: a copy is a new inode, even with every file the same.
fn dir_identity(dir: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    Ok(format!("{}:{}", meta.dev(), meta.ino()))
}

/// Reads the instance id, bound to the data dir's device and inode (`<id> <dev>:<ino>`); mints a new one
/// for a new data dir, and for a copy.
fn instance(data_dir: &Path) -> anyhow::Result<Instance> {
    let path = data_dir.join("instance-id");
    let here = dir_identity(data_dir)?;
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut words = recorded.split_whitespace();
    let (id, bound) = (words.next(), words.next());
    // Written aside and renamed into place: a crash mid-write must not leave half an id, which would
    // read as a copy and orphan this instance's cgroups.
    let write = |id: &str| {
        let staged = data_dir.join("instance-id.new");
        std::fs::write(&staged, format!("{id} {here}\n"))
            .and_then(|()| std::fs::rename(&staged, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    };
    match (id, bound) {
        (Some(id), Some(bound)) if bound == here => Ok(Instance {
            id: id.to_owned(),
            copied: false,
        }),
        // Written before ids were bound to their directory: bind it now.
        (Some(id), None) => {
            write(id)?;
            Ok(Instance {
                id: id.to_owned(),
                copied: false,
            })
        }
        (id, _) => {
            let copied = id.is_some();
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let new = format!("{:x}", (nanos as u64) ^ ((std::process::id() as u64) << 40));
            if copied {
                tracing::warn!(
                    data_dir = %data_dir.display(),
                    old = id.unwrap_or_default(),
                    new = %new,
                    "this data dir is a copy of another (or was moved): it gets an instance id of its own, and the \
                     processes and cgroups its records name are left to the daemon that owns them"
                );
            }
            write(&new)?;
            Ok(Instance { id: new, copied })
        }
    }
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

/// The account jobs run as. A root daemon switches to `jobs.user` (default: `aura` if it exists, else
/// `nobody`); any other daemon runs jobs as itself and refuses another name.
fn job_identity(configured: Option<&str>) -> anyhow::Result<Option<JobIdentity>> {
    let is_root = rustix::process::geteuid().is_root();
    if !is_root {
        if let Some(name) = configured {
            let me = JobIdentity::current_name();
            if me.as_deref() != Some(name) {
                anyhow::bail!(
                    "jobs.user = {name:?}: only a daemon running as root can run jobs as another \
                    account (this one runs as {}); remove the setting or start it as root",
                    me.unwrap_or_else(|| format!("uid {}", rustix::process::geteuid().as_raw()))
                );
            }
        }
        return Ok(None);
    }
    let name = match configured {
        Some(name) => name.to_owned(),
        None if JobIdentity::lookup(DEDICATED_USER).is_ok() => DEDICATED_USER.to_owned(),
        None => FALLBACK_USER.to_owned(),
    };
    let identity = JobIdentity::lookup(&name)?;
    if identity.is_root() {
        tracing::warn!("jobs.user is root: every job runs with full privileges over this machine");
        return Ok(None);
    }
    Ok(Some(identity))
}

/// The account a root daemon runs jobs as when `jobs.user` is not set, if it exists
/// (`useradd --system aura`; `cargo xtask test` creates it).
const DEDICATED_USER: &str = "aura";
/// Else this one, which every Linux system has.
const FALLBACK_USER: &str = "nobody";

/// What jobs may do, from `jobs.*`.
fn sandbox(config: &Config) -> anyhow::Result<JobSandbox> {
    let jobs = &config.jobs;
    let identity = job_identity(jobs.user.as_deref())?;
    let mut base_env =
        JobSandbox::base_env_from(std::env::vars_os(), &jobs.pass_env, identity.as_ref());
    base_env.extend(jobs.env.clone());
    let path = base_env
        .get("PATH")
        .cloned()
        .unwrap_or_else(|| aura_supervisor::DEFAULT_PATH.to_owned());
    let programs = (!jobs.programs.is_empty())
        .then(|| aura_supervisor::ProgramAllowlist::new(&jobs.programs, &path))
        .transpose()?;
    Ok(JobSandbox {
        identity,
        no_new_privs: jobs.no_new_privs,
        core_dumps: jobs.core_dumps,
        max_open_files: jobs.max_open_files,
        max_processes: jobs.max_processes,
        umask: jobs.umask,
        base_env,
        programs,
        cwd_roots: Some(JobSandbox::canonical_roots(&jobs.cwd_roots)?),
    })
}

/// Jobs running as another account must reach their directories under the data dir by absolute path:
/// the data dir gets search permission for others (never read: they cannot list it). A parent that is
/// closed (as `/root` is) still leaves relative paths working — a job starts inside its directory — and
/// is worth a warning.
fn open_data_dir_to_jobs(data_dir: &Path) -> anyhow::Result<()> {
    let mode = std::fs::metadata(data_dir)?.permissions().mode();
    if mode & 0o001 == 0 {
        std::fs::set_permissions(
            data_dir,
            std::fs::Permissions::from_mode((mode & 0o7777) | 0o001),
        )
        .with_context(|| format!("cannot give jobs passage through {}", data_dir.display()))?;
    }
    if let Some(closed) = data_dir
        .ancestors()
        .skip(1)
        .find(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
    {
        tracing::warn!(
            closed = %closed.display(),
            "jobs run as another account and cannot pass through this parent of the data dir: they work in their directories by relative paths only; a data dir such as /var/lib/aura avoids this"
        );
    }
    Ok(())
}

/// The tokens the API accepts: the configured ones and, with `api.local_token`, the data dir's own.
fn api_tokens(
    config: &Config,
    data_dir: &Path,
) -> anyhow::Result<(Tokens, Option<(String, std::path::PathBuf)>)> {
    let mut tokens = Tokens::new(&config.api.tokens)?;
    let local = if config.api.local_token {
        let (token, path) = runtime::local_token(data_dir)?;
        tokens.add(
            TokenHash::of(&token),
            Principal {
                name: LOCAL_TOKEN_NAME.into(),
                scope: Scope::Admin,
                max_queued: None,
            },
        )?;
        Some((token, path))
    } else {
        None
    };
    Ok((tokens, local))
}

/// How often a fleet node reads the API tokens the others published.
const FLEET_TOKENS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Accepts the tokens the other nodes published (a failed read keeps the last ones).
async fn sync_fleet_tokens(engine: &aura_engine::EngineHandle, tokens: &Tokens) {
    match engine.fleet_tokens().await {
        Ok(published) => {
            let entries: Vec<_> = published
                .into_iter()
                .map(|t| (t.node, t.name, t.hash, t.scope))
                .collect();
            tokens.set_fleet(&entries);
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the fleet's tokens"),
    }
}

/// The name the fleet's shared token authenticates as.
const FLEET_TOKEN_NAME: &str = "fleet";

/// This node's fleet settings: the password and the shared token from the secrets, the node's name
/// (configured, else the host name and the instance id's start) and the URL other nodes reach it at.
fn fleet_config(
    config: &Config,
    url: &str,
    instance_id: &str,
    address: std::net::SocketAddr,
    secrets: &aura_engine::Secrets,
) -> anyhow::Result<aura_engine::FleetConfig> {
    let section = &config.fleet;
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let short: String = instance_id.chars().take(8).collect();
    let node_name = section
        .node_name
        .clone()
        .unwrap_or_else(|| format!("{host}-{short}"));
    let advertise = section.advertise_url.clone().or_else(|| {
        // A wildcard listen address is no address to dial: the host name is.
        Some(if address.ip().is_unspecified() {
            format!("http://{host}:{}", address.port())
        } else {
            format!("http://{address}")
        })
    });
    if section.heartbeat_timeout < std::time::Duration::from_secs(1) {
        anyhow::bail!("fleet.heartbeat_timeout must be at least 1s");
    }
    if section.commit_window > std::time::Duration::from_secs(1) {
        anyhow::bail!("fleet.commit_window must be at most 1s");
    }
    Ok(aura_engine::FleetConfig {
        store: aura_engine::PgConfig {
            url: url.to_owned(),
            password: secrets.get(&section.password_secret).cloned(),
            pool_size: section.pool_size.max(1),
            connect_timeout: section.connect_timeout,
        },
        node_id: instance_id.to_owned(),
        node_name,
        tags: section.tags.clone(),
        url: advertise,
        heartbeat_timeout: section.heartbeat_timeout,
        prefetch: section.prefetch.max(1),
        commit_window: section.commit_window,
        token: secrets.get(&section.token_secret).cloned(),
    })
}

/// Refuses to serve a non-loopback address without configured tokens: the API runs commands.
fn check_listen(config: &Config) -> anyhow::Result<()> {
    if !config.listen.ip().is_loopback() && config.api.tokens.is_empty() {
        anyhow::bail!(
            "refusing to listen on {} without API tokens: anyone who can reach that address could run \
            commands on this machine. Configure [[api.tokens]] (`aura token create NAME --scope submit` \
            prints one with its config lines), and put a TLS-terminating reverse proxy (nginx, Caddy) in \
            front — Aura itself speaks plain HTTP. Or listen on 127.0.0.1.",
            config.listen
        );
    }
    Ok(())
}

/// How many connections fit the daemon's open-file limit, leaving room for its jobs' pipes and logs,
/// the database and the pooled cgroups' control files.
fn connection_cap(configured: usize, max_concurrent: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let reserve = 512 + 16 * max_concurrent as u64;
    let fits = usize::try_from(soft.saturating_sub(reserve).max(64)).unwrap_or(usize::MAX);
    if fits < configured {
        tracing::warn!(
            configured,
            fits,
            open_file_limit = soft,
            "api.max_connections lowered to fit the open-file limit (raise it with LimitNOFILE= or ulimit -n)"
        );
    }
    configured.min(fits)
}

/// The database holds every job's spec: readable by the daemon alone, also where an older version (or
/// another umask) made it readable by others, now that jobs of another account may pass through the data
/// dir.
fn make_database_private(data_dir: &Path) -> anyhow::Result<()> {
    for name in ["aura.db", "aura.db-wal", "aura.db-shm", "instance-id"] {
        let path = data_dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot make {} private", path.display()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Creates and locks the data dir and reads its instance id (blocking file work, kept off the async workers).
fn prepare_data_dir(dir: &Path) -> anyhow::Result<(std::path::PathBuf, DataDirLock, Instance)> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let data_dir = dir.canonicalize().context("cannot resolve the data dir")?;
    let lock = DataDirLock::acquire(&data_dir)?;
    make_database_private(&data_dir)?;
    protect_from_oom_killer();
    let instance = instance(&data_dir)?;
    Ok((data_dir, lock, instance))
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    check_listen(&config)?;
    // Everything the daemon creates (database, logs, tokens, runtime files) is its own; jobs get their
    // own umask (`jobs.umask`) and their directories are handed to them.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let store_kind = config.store_kind()?;
    let (data_dir, _lock, instance, sandbox, mut tokens, local_token) =
        tokio::task::spawn_blocking({
            let config = config.clone();
            move || -> anyhow::Result<_> {
                raise_priority(config.supervisor.daemon_nice);
                let (data_dir, lock, instance) = prepare_data_dir(&config.data_dir)?;
                let sandbox = sandbox(&config)?;
                if sandbox.identity.is_some() {
                    open_data_dir_to_jobs(&data_dir)?;
                }
                let (tokens, local_token) = api_tokens(&config, &data_dir)?;
                Ok((data_dir, lock, instance, sandbox, tokens, local_token))
            }
        })
        .await??;
    let secrets = {
        let file = config.jobs.secrets_file.clone();
        let default = data_dir.join("secrets.toml");
        tokio::task::spawn_blocking(move || {
            // `vars_os`: a variable that is not UTF-8 (none of Aura's) must not stop the daemon.
            let env = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
            aura_engine::Secrets::load(
                Some(file.as_deref().unwrap_or(&default)),
                file.is_some(),
                env,
            )
        })
        .await??
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let fleet = match &store_kind {
        aura::config::StoreKind::Sqlite => None,
        aura::config::StoreKind::Postgres(url) => {
            let fleet = fleet_config(&config, url, &instance.id, address, &secrets)?;
            if let Some(token) = &fleet.token {
                // Other nodes forward requests for the jobs this node holds with the shared token.
                tokens.add(
                    TokenHash::of(token.expose()),
                    Principal {
                        name: FLEET_TOKEN_NAME.into(),
                        scope: Scope::Admin,
                        max_queued: None,
                    },
                )?;
            }
            Some(fleet)
        }
    };
    let fleet_token = fleet.as_ref().and_then(|f| f.token.clone());
    let identity = sandbox.identity.clone();

    let mut supervisor = SupervisorConfig::new(instance.id);
    supervisor.backend = config.supervisor.backend;
    supervisor.sample_interval = config.supervisor.sample_interval;
    supervisor.log_cap = aura_logs::LogCap::new(config.supervisor.log_cap.bytes())
        .context("invalid supervisor.log_cap")?;
    // Logs stop short of the database's reserve and as much again: a log flood filling the volume
    // must leave the released reserve to the records of the jobs under way.
    supervisor.log_min_free = config.database_reserve.bytes().saturating_mul(2);
    supervisor.job_oom_score_adj = config.supervisor.job_oom_score_adj;
    supervisor.job_nice = config.supervisor.job_nice;
    supervisor.kill_wait = config.supervisor.kill_wait;
    supervisor.memory_watch_interval = config.supervisor.memory_watch_interval;
    // Only a daemon that may throttle prepares the instance-level cpu control its jobs join.
    supervisor.cpu_cap = config.guards.enabled && config.guards.throttle.enabled;
    supervisor.sandbox = sandbox;
    let secret_count = secrets.len();
    let engine = aura_engine::start(EngineConfig {
        data_dir: data_dir.clone(),
        max_concurrent: config.max_concurrent,
        standby: config.standby_jobs,
        admission: config.admission.to_engine(),
        guards: config.guards.clone(),
        diagnostics: config.diagnostics.clone(),
        warnings: config.warnings.clone(),
        janitor: config.janitor.clone(),
        uploads: config.uploads.to_engine(),
        fleet,
        host_interval: config.metrics.interval,
        host_history: config.metrics.history,
        requeue_on_shutdown: config.requeue_on_shutdown,
        shutdown_grace: config.shutdown_grace,
        quarantine_after: config.quarantine_after,
        store_reserve: config.database_reserve.bytes(),
        foreign_trees: instance.copied,
        media: config.media.clone(),
        supervisor,
        secrets,
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
    match &identity {
        Some(id) => println!("aura serve: jobs run as {} (uid {})", id.name, id.uid),
        None => println!(
            "aura serve: jobs run as this daemon's account (uid {})",
            rustix::process::geteuid().as_raw()
        ),
    }
    if secret_count > 0 {
        println!("aura serve: {secret_count} named secrets for jobs");
    }
    let runtime_file = match &local_token {
        Some((token, path)) => {
            println!(
                "aura serve: API token in {} (the CLI finds it; `aura token` prints it)",
                path.display()
            );
            let info = RuntimeInfo {
                url: format!("http://{address}"),
                pid: std::process::id(),
                data_dir: data_dir.clone(),
                token: token.clone(),
            };
            match RuntimeFile::write(address.port(), &info) {
                Ok(file) => Some(file),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write the runtime file; the CLI needs --token or AURA_TOKEN");
                    None
                }
            }
        }
        None => None,
    };
    if let Some(file) = &runtime_file {
        tracing::debug!(path = %file.path().display(), "runtime file written");
    }
    // Before the daemon says it listens: a SIGTERM from a supervisor that saw it start (systemd, a test)
    // must run the shutdown protocol, not the default action that kills the daemon and leaves its jobs.
    let mut signals = Signals::install()?;
    println!("aura serve: listening on http://{address}");

    // Fleet mode: one token reaches the whole fleet. This node's tokens (hashes) are published, the
    // others' accepted, and kept fresh as nodes come and go.
    let token_sync = match &store_kind {
        aura::config::StoreKind::Sqlite => None,
        aura::config::StoreKind::Postgres(_) => {
            let own = tokens
                .own()
                .into_iter()
                .filter(|(name, _, _)| name != FLEET_TOKEN_NAME)
                .map(|(name, hash, scope)| aura_engine::FleetToken {
                    node: String::new(),
                    name,
                    hash: hash.into(),
                    scope: scope.as_str().to_owned(),
                })
                .collect();
            engine.publish_tokens(own).await?;
            sync_fleet_tokens(&engine, &tokens).await;
            let (engine, tokens) = (engine.clone(), tokens.clone());
            Some(tokio::spawn(async move {
                let mut every = tokio::time::interval(FLEET_TOKENS_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    sync_fleet_tokens(&engine, &tokens).await;
                }
            }))
        }
    };
    let mut api = api_config(&config, address, tokens);
    api.fleet_token = fleet_token;
    let router = aura_server::router(engine.clone(), api);
    let listener_config = aura_server::ListenerConfig {
        max_connections: connection_cap(config.api.max_connections, config.max_concurrent),
        header_timeout: config.api.header_timeout,
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(aura_server::serve(
        listener,
        router,
        listener_config,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let trimmer = tokio::spawn({
        let engine = engine.clone();
        async move {
            let mut every = tokio::time::interval(TRIM_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Some(free) = engine.trim_free_memory(TRIM_ABOVE).await {
                    tracing::debug!(free_bytes = free, "returned free heap memory to the OS");
                }
            }
        }
    });
    let signal = signals.next().await;
    tracing::info!(signal, grace = ?config.shutdown_grace, "shutting down: no new jobs, stopping running ones (a second SIGTERM or SIGINT kills them at once)");
    // The engine first: it refuses new submissions at once and stops every tree (killing what is left
    // after `shutdown_grace`); the API keeps answering reads meanwhile, then stops.
    let shutdown = engine.shutdown();
    tokio::pin!(shutdown);
    let result = tokio::select! {
        result = &mut shutdown => result,
        signal = signals.next() => {
            tracing::warn!(signal, "second signal: killing every job tree now");
            engine.kill_all();
            shutdown.await
        }
    };
    trimmer.abort();
    if let Some(sync) = token_sync {
        sync.abort();
    }
    result.context("engine shutdown failed")?;
    let _ = stop_tx.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(2), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP server did not finish in-flight requests within 2s"),
    }
    drop(runtime_file);
    tracing::info!("shutdown complete");
    Ok(())
}

/// How often the daemon looks at its allocator's free memory, and how much it keeps before giving it
/// back: a connection flood leaves tens of MB free inside glibc's heaps (BENCHMARKS.md, "Faults").
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const TRIM_ABOVE: u64 = 4 << 20;

/// The API's checks and limits from `api.*`, for a daemon listening on `address`.
fn api_config(
    config: &Config,
    address: std::net::SocketAddr,
    tokens: Tokens,
) -> aura_server::ApiConfig {
    let api = &config.api;
    let mut hosts = aura_server::SecurityConfig::loopback_hosts(address.port());
    if !address.ip().is_unspecified() && !address.ip().is_loopback() {
        // A client that dials the address itself sends it as the Host (an IP cannot be rebound).
        hosts.push(match address.ip() {
            std::net::IpAddr::V4(ip) => format!("{ip}:{}", address.port()),
            std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", address.port()),
        });
    }
    hosts.extend(api.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()));
    let mut out = aura_server::ApiConfig::new(address.port(), tokens);
    out.max_body_bytes = usize::try_from(api.max_body.bytes()).unwrap_or(usize::MAX);
    out.request_timeout = api.request_timeout;
    out.max_event_streams = api.max_event_streams;
    out.stream_heartbeat = api.stream_heartbeat;
    out.max_sessions = api.max_sessions;
    out.session_idle = api.session_idle;
    out.stream_send_buffer = api
        .stream_send_buffer
        .map(|b| usize::try_from(b.bytes()).unwrap_or(usize::MAX));
    let security = std::sync::Arc::make_mut(&mut out.security);
    security.allowed_hosts = hosts;
    security.allowed_origins = api
        .allowed_origins
        .iter()
        .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
        .collect();
    security.public_metrics = api.public_metrics;
    security.max_header_bytes = usize::try_from(api.max_header_bytes.bytes()).unwrap_or(usize::MAX);
    security.max_uri_bytes = usize::try_from(api.max_uri_bytes.bytes()).unwrap_or(usize::MAX);
    out
}

/// SIGTERM and SIGINT, installed once: the first begins the graceful shutdown, the second cuts it short.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
