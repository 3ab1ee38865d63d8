//! Command-line interface: argument parsing and the client commands, which talk to the daemon only through
//! the HTTP API.

use crate::render::{describe_event, describe_state, event_parts};
use anyhow::{bail, Context};
use aura::config::Config;
use aura_client::{CancelSelection, Client, JobView, ListQuery};
use aura_model::{
    ByteSize, ExitStatus, JobId, JobSpec, JobState, ProgressMode, RetryPolicy, StateName,
    StopSequence, Timestamp,
};
use clap::{CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "aura",
    version,
    about = "Runs media jobs as supervised process trees"
)]
pub struct Args {
    /// URL of the daemon for client commands.
    #[arg(
        long,
        global = true,
        env = "AURA_SERVER",
        default_value = "http://127.0.0.1:7411"
    )]
    server: String,
    /// API token for client commands. Default: the token of the local daemon at --server, which `aura
    /// serve` records for this user (see `aura token`).
    #[arg(long, global = true, env = "AURA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: engine and HTTP API.
    Serve {
        /// Data directory (database, job directories, logs). Default: ./aura-data
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on. Default: 127.0.0.1:7411
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Where jobs are stored: `sqlite` (the data dir's database, the default) or
        /// `postgres://user@host:port/dbname` (fleet mode; the password is a secret, never in the URL).
        #[arg(long)]
        store: Option<String>,
        /// TOML configuration file.
        #[arg(long, env = "AURA_CONFIG")]
        config: Option<PathBuf>,
        /// Log format on stderr: human, or json (one object per line). Default: the config's
        /// `log.format` (human).
        #[arg(long, value_enum)]
        log_format: Option<aura::config::LogFormat>,
        /// The global client options, taken here so that `aura serve --help` does not list them (clap
        /// propagates a global option only to subcommands without one of that name); unused.
        #[arg(long, hide = true)]
        server: Option<String>,
        #[arg(long, hide = true)]
        token: Option<String>,
    },
    /// Submit a job: `aura submit [OPTIONS] -- PROGRAM ARGS...`, or a batch: `aura submit --from FILE`
    Submit(Box<SubmitArgs>),
    /// List jobs, newest first.
    #[command(visible_alias = "list")]
    Jobs {
        /// Only jobs in these states (queued, held, running, paused, stopping, finished); repeatable.
        #[arg(long)]
        state: Vec<String>,
        /// Only jobs with label k=v; repeatable (all must match).
        #[arg(long = "label", value_name = "K=V", value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print the job records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Everything known about one job.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Captured stdout and stderr of a job.
    Logs {
        id: i64,
        /// Keep printing new output until the job ends.
        #[arg(long, short)]
        follow: bool,
        /// Only stdout.
        #[arg(long, conflicts_with = "stderr")]
        stdout: bool,
        /// Only stderr.
        #[arg(long)]
        stderr: bool,
    },
    /// Stop a job: its stop sequence (graceful signal, grace period, SIGKILL) on the whole process tree;
    /// with --all, every unfinished job the selection picks.
    Cancel {
        /// The job (or --all).
        #[arg(required_unless_present = "all", conflicts_with_all = ["all", "states", "labels", "yes"])]
        id: Option<i64>,
        /// Wait until the tree is gone and print the outcome.
        #[arg(long, conflicts_with = "all")]
        wait: bool,
        #[command(flatten)]
        select: Selection,
    },
    /// Kill a job: SIGKILL to its whole process tree at once, no grace period (it ends cancelled); with
    /// --all, every unfinished job the selection picks.
    Kill {
        /// The job (or --all).
        #[arg(required_unless_present = "all", conflicts_with_all = ["all", "states", "labels", "yes"])]
        id: Option<i64>,
        #[command(flatten)]
        select: Selection,
    },
    /// Freeze a running job's whole process tree; time paused counts toward neither its timeout nor
    /// stall detection.
    Pause { id: i64 },
    /// Thaw a paused job's process tree.
    Resume { id: i64 },
    /// Keep a queued job from starting until `aura release`.
    Hold { id: i64 },
    /// Let a held job start again, in its place in the queue.
    Release { id: i64 },
    /// Run a finished job's spec again as a new job; prints the new job's id last.
    Retry {
        id: i64,
        /// Print only the new job's id.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Give a job that has not started a new priority (higher runs first; may be negative).
    Priority {
        id: i64,
        /// The new priority, e.g. 10 or -5.
        #[arg(allow_negative_numbers = true)]
        priority: i32,
    },
    /// Drain the node: nothing new starts until `aura undrain`; running jobs finish.
    Drain,
    /// Undrain the node: queued jobs start again as admission allows.
    Undrain,
    /// Run the janitor now: old temp files, unused uploads, finished jobs' directories and logs,
    /// archives and history past retention; `--status` shows its schedule instead.
    Cleanup {
        /// List what would be removed, archived or compressed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this task (repeatable): tmp, uploads, cache, work, logs, archive, history, compact.
        #[arg(long = "task", value_name = "NAME")]
        tasks: Vec<aura_model::janitor::TaskName>,
        /// Show each task's last and next run and totals instead of running anything.
        #[arg(long, conflicts_with_all = ["dry_run", "tasks"])]
        status: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job until it ends: its state changes and progress (a bar on a terminal, plain lines
    /// otherwise), then its outcome and memory report; exits with the job's exit code.
    Follow { id: i64 },
    /// Wait until every given job has ended, printing each outcome; exits 0 when all succeeded, else with
    /// the exit code of the first (in the order given) that did not.
    Wait {
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// A live view of running jobs, the host and admission (q to quit).
    Top,
    /// The fleet's nodes (fleet mode): state, tags, running and claimed jobs, capacity, heartbeat age;
    /// `*` marks the node --server names.
    Nodes {
        /// Print the nodes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Engine status: backend, running and queued jobs, admission, whether the node is drained, paused
    /// and held jobs.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the API token client commands use for --server (for scripts and curl), or make a new one.
    Token {
        #[command(subcommand)]
        action: Option<TokenAction>,
    },
    /// The engine's own decisions, oldest first: admission paused/resumed, memory critical, pressure victims.
    Events {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long)]
        json: bool,
    },
    /// Print the configuration `aura serve` would run with (defaults, the config file, AURA_*
    /// variables), each value with where it came from; credentials are redacted. Needs no daemon.
    Config {
        /// TOML configuration file, as for `aura serve`.
        #[arg(long, env = "AURA_CONFIG")]
        config: Option<PathBuf>,
        /// Each key's value and source as JSON.
        #[arg(long, conflicts_with = "example")]
        json: bool,
        /// Print a documented example config file instead: every key, its default and what it does.
        #[arg(long)]
        example: bool,
    },
    /// Print the shell completion script, e.g. `aura completions bash > /etc/bash_completion.d/aura`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Upload a file for jobs to read (`aura submit --input NAME=ID`); prints the upload id (the file's
    /// SHA-256) as the last line: `id=$(aura upload in.mov | tail -1)`.
    Upload {
        /// The file.
        file: PathBuf,
        /// Print only the upload id.
        #[arg(long, short)]
        quiet: bool,
    },
    /// A job's files (its working directory, or its archive): list them, or download one with `aura
    /// fetch ID PATH`, resuming an interrupted download.
    Fetch {
        id: i64,
        /// The file to download, as the listing names it (`out.mp4`, `sub/x.txt`). Without it: the
        /// listing.
        path: Option<String>,
        /// Where to write the file (`-`: stdout). Default: its name in the current directory. Written to
        /// OUT.part and renamed when complete; a OUT.part left by an interrupted download is resumed.
        #[arg(long, short, value_name = "OUT", requires = "path")]
        output: Option<PathBuf>,
        /// The listing as JSON.
        #[arg(long, conflicts_with = "path")]
        json: bool,
    },
    /// Print the man page aura(1) (`aura man | man -l -`), or write one page per command to a directory.
    Man {
        /// Write aura.1 and aura-<command>.1 for every command into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Which jobs `aura cancel --all` and `aura kill --all` stop.
#[derive(clap::Args, Debug)]
struct Selection {
    /// Every unfinished job (a submit token's own only), narrowed by --state and --label.
    #[arg(long)]
    all: bool,
    /// With --all: only jobs in this state (queued, held, running, paused, stopping); repeatable.
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',', value_parser = parse_unfinished_state)]
    states: Vec<StateName>,
    /// With --all: only jobs with label k=v; repeatable (all must match).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_key_value)]
    labels: Vec<(String, String)>,
    /// With --all: do not ask before acting (not on a terminal, nothing is asked anyway).
    #[arg(long, short)]
    yes: bool,
}

/// A state an unfinished job can be in.
fn parse_unfinished_state(s: &str) -> Result<StateName, String> {
    match s.trim().parse::<StateName>()? {
        StateName::Finished => Err(
            "a finished job cannot be stopped: use queued, held, running, paused or stopping"
                .into(),
        ),
        state => Ok(state),
    }
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Make a new random token and print it with the lines that add it to a daemon's config file (which
    /// stores only its hash). The daemon reads its config at start-up.
    Create {
        /// Its name: what the daemon's log and the job records show.
        name: String,
        /// read (jobs, logs, metrics), submit (also submit and cancel its own jobs), admin (everything).
        #[arg(long, default_value = "submit")]
        scope: aura_server::auth::Scope,
        /// Most jobs of this token waiting at once.
        #[arg(long)]
        max_queued: Option<usize>,
    },
}

#[derive(clap::Args, Debug)]
struct SubmitArgs {
    /// Wall-clock limit, e.g. 90s, 2h. Default: 60m.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Memory request, e.g. 512M, 2G: admission reserves it, and it is also the job's hard limit unless
    /// --memory-max sets a higher one.
    #[arg(long)]
    memory: Option<ByteSize>,
    /// Hard memory limit, e.g. 4G: beyond it the job's tree is killed (outcome memory_limit_exceeded).
    #[arg(long)]
    memory_max: Option<ByteSize>,
    /// CPU request in cores (fractions allowed).
    #[arg(long, value_parser = parse_cpu, allow_negative_numbers = true)]
    cpu: Option<f64>,
    /// GPUs requested.
    #[arg(long)]
    gpus: Option<u32>,
    /// Expected output size on the data dir's volume, e.g. 5G.
    #[arg(long)]
    disk: Option<ByteSize>,
    /// A named limit (provider) the job uses, e.g. openai (repeatable).
    #[arg(long = "provider")]
    providers: Vec<String>,
    /// Higher runs first. Default: 0.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Label k=v (repeatable); `kind` names the class of work.
    #[arg(long = "label", value_parser = parse_key_value)]
    labels: Vec<(String, String)>,
    /// Environment variable K=V for the job (repeatable), on top of the jobs' base environment.
    #[arg(long = "env", value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Environment variable whose value is the daemon's secret NAME, VAR=NAME (repeatable): the value
    /// never appears in the job's record.
    #[arg(long = "secret", value_parser = parse_key_value)]
    secrets: Vec<(String, String)>,
    /// Working directory (inside the daemon's jobs.cwd_roots). Default: a fresh directory for the job under
    /// the daemon's data dir.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Stop sequence, e.g. INT:5s,TERM:3s (SIGKILL follows). Default: INT:5s,TERM:3s.
    #[arg(long)]
    stop: Option<StopSequence>,
    /// Extra attempts after a failure.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Start only after this job succeeded (repeatable); if it ends otherwise, this job ends with outcome
    /// dependency_failed without starting.
    #[arg(long = "after", value_name = "ID")]
    after: Vec<i64>,
    /// An upload the job reads (`aura upload` prints its id), as NAME=UPLOAD_ID: it is in the job's
    /// working directory as NAME when it starts (repeatable; not with --cwd).
    #[arg(long = "input", value_name = "NAME=UPLOAD_ID", value_parser = parse_input)]
    inputs: Vec<(String, aura_model::files::UploadId)>,
    /// The media duration the job produces, e.g. 90s, for percent and ETA where Aura cannot learn it.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DUR")]
    expected_duration: Option<Duration>,
    /// Stop the job (outcome stalled) when its progress has not advanced for this long, e.g. 2m.
    /// Default: the daemon's media.stall_after (2m).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DUR")]
    stall_after: Option<Duration>,
    /// How Aura reads the job's progress: auto (FFmpeg's, by program name), ffmpeg, ffmpeg_stderr, aura
    /// (lines `aura-progress 0.42`) or none.
    #[arg(long, value_parser = parse_progress_mode, value_name = "MODE")]
    progress: Option<ProgressMode>,
    /// Submit the jobs of a JSON-lines file (`-`: stdin) as one batch, queued atomically: one job spec per
    /// line, with an optional "name" and "after" naming job ids or earlier lines' names.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "command", "timeout", "memory", "memory_max", "cpu", "gpus", "disk", "providers", "labels",
        "env", "secrets", "cwd", "stop", "retries", "after", "expected_duration", "stall_after",
        "progress", "priority", "inputs",
    ])]
    from: Option<PathBuf>,
    /// Print only the job id (one per line for --from).
    #[arg(long, short)]
    quiet: bool,
    /// Wait for the job, print its outcome and exit with its exit code (with --from: every job of the
    /// batch, as `aura wait` does).
    #[arg(long)]
    wait: bool,
    /// Follow the job as `aura follow` does: state changes and progress until it ends, then its outcome;
    /// exits with its exit code (with --from: every job of the batch, as `aura wait` does).
    #[arg(long)]
    follow: bool,
    /// The program and its arguments (no shell: name one, e.g. `sh -c '…'`, if you need it).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required_unless_present = "from", value_parser = clap::value_parser!(OsString))]
    command: Vec<OsString>,
}

/// A progress mode by its name, as the API spells it.
fn parse_progress_mode(s: &str) -> Result<ProgressMode, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!("{s:?} is not a progress mode: auto, ffmpeg, ffmpeg_stderr, aura or none")
    })
}

/// Cores as a positive, finite number. JSON has no NaN or infinity: serialised, they became `null`, and the
/// request vanished without a word.
fn parse_cpu(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(cores) if cores.is_finite() && cores > 0.0 => Ok(cores),
        Ok(_) => Err(format!("{s:?} is not a positive, finite number of cores")),
        Err(e) => Err(format!("{s:?} is not a number of cores: {e}")),
    }
}

/// `NAME=UPLOAD_ID` of `--input`.
fn parse_input(s: &str) -> Result<(String, aura_model::files::UploadId), String> {
    let (name, id) = parse_key_value(s)?;
    aura_model::files::check_input_name(&name)?;
    Ok((name, id.parse().map_err(|e| format!("{e}"))?))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// `aura serve`'s configuration (file, environment, then flags), or `None` for a client command. Loaded
/// before the async runtime exists: the runtime's size is part of it.
pub fn serve_config(args: &Args) -> anyhow::Result<Option<Config>> {
    let Command::Serve {
        data_dir,
        listen,
        store,
        config,
        log_format,
        ..
    } = &args.command
    else {
        return Ok(None);
    };
    let mut cfg = Config::load(config.as_deref())?;
    if let Some(format) = log_format {
        cfg.log.format = *format;
    }
    init_logging(cfg.log.format);
    if let Some(dir) = data_dir {
        cfg.data_dir = dir.clone();
    }
    if let Some(listen) = listen {
        cfg.listen = *listen;
    }
    if let Some(store) = store {
        cfg.store = Some(store.clone());
    }
    // Checked before anything starts: a password in the URL is refused, whoever wrote it.
    cfg.store_kind()?;
    Ok(Some(cfg))
}

/// Runs a client command, or `aura serve` with its configuration from `serve_config`.
pub async fn run(args: Args, serve: Option<Config>) -> anyhow::Result<u8> {
    if let Some(cfg) = serve {
        crate::serve::run(cfg).await?;
        return Ok(0);
    }
    match &args.command {
        Command::Token { action } => return token_command(&args, action.as_ref()),
        Command::Config {
            config,
            json,
            example,
        } => return config_command(config.as_deref(), *json, *example),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Args::command(), "aura", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Man { dir } => return man_command(dir.as_deref()),
        _ => {}
    }
    let token = client_token(&args);
    let client = match &token {
        Some(token) => Client::authorized(&args.server, token)?,
        None => Client::new(&args.server)?,
    };
    let server = args.server.clone();
    client_command(args, &client).await.map_err(|e| {
        let unauthorized = e.downcast_ref::<aura_client::ClientError>().is_some_and(
            |c| matches!(c, aura_client::ClientError::Api(p) if p.code == "unauthorized"),
        );
        if unauthorized && token.is_none() {
            e.context(format!(
                "no API token for {server}: this user has no runtime file of a local daemon there \
                (is `aura serve` running as this user?); pass --token or set AURA_TOKEN"
            ))
        } else {
            e
        }
    })
}

async fn client_command(args: Args, client: &Client) -> anyhow::Result<u8> {
    let client = client.clone();
    match args.command {
        Command::Serve { .. }
        | Command::Token { .. }
        | Command::Config { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => unreachable!("handled above"),
        Command::Submit(submit) => submit_job(&client, *submit).await,
        Command::Jobs {
            state,
            labels,
            limit,
            json,
        } => {
            let states = state
                .iter()
                .flat_map(|s| s.split(','))
                .map(str::to_owned)
                .collect();
            let page = client
                .list(&ListQuery {
                    states,
                    labels,
                    limit: Some(limit),
                    ..Default::default()
                })
                .await?;
            if json {
                print_json(&page.jobs)?;
            } else {
                print_table(&page.jobs);
            }
            Ok(0)
        }
        Command::Show { id, json } => {
            let view = client.get(JobId(id)).await?;
            if json {
                print_json(&view)?;
            } else {
                let events = client.events(JobId(id)).await?;
                print_job(&view, &events);
            }
            Ok(0)
        }
        Command::Logs {
            id,
            follow,
            stdout,
            stderr,
        } => {
            let streams: &[&str] = match (stdout, stderr) {
                (true, _) => &["stdout"],
                (_, true) => &["stderr"],
                _ => &["stdout", "stderr"],
            };
            print_logs(&client, JobId(id), streams, follow).await?;
            Ok(0)
        }
        Command::Cancel {
            id: None, select, ..
        } => stop_selected(&client, select, false).await,
        Command::Kill { id: None, select } => stop_selected(&client, select, true).await,
        Command::Kill { id: Some(id), .. } => {
            let view = client.kill(JobId(id)).await?;
            println!("job {id}: {}", describe_state(&view));
            Ok(0)
        }
        Command::Pause { id } => acted(id, client.pause(JobId(id)).await?),
        Command::Resume { id } => acted(id, client.resume(JobId(id)).await?),
        Command::Hold { id } => acted(id, client.hold(JobId(id)).await?),
        Command::Release { id } => acted(id, client.release(JobId(id)).await?),
        Command::Priority { id, priority } => {
            let view = client.set_priority(JobId(id), priority).await?;
            println!(
                "job {id}: priority {} ({})",
                view.job.spec.priority,
                describe_state(&view)
            );
            Ok(0)
        }
        Command::Retry { id, quiet } => {
            let view = client.retry(JobId(id)).await?;
            // Scripts take the last number printed: the new job's id comes last.
            if quiet {
                println!("{}", view.job.id);
            } else {
                println!("job {id} retried as job {}", view.job.id);
            }
            Ok(0)
        }
        Command::Upload { file, quiet } => crate::transfer::upload(&client, &file, quiet).await,
        Command::Fetch {
            id,
            path: None,
            json,
            ..
        } => crate::transfer::list(&client, JobId(id), json).await,
        Command::Fetch {
            id,
            path: Some(path),
            output,
            ..
        } => crate::transfer::fetch(&client, JobId(id), &path, output.as_deref()).await,
        Command::Drain => node(client.drain().await?),
        Command::Undrain => node(client.undrain().await?),
        Command::Cleanup {
            dry_run,
            tasks,
            status,
            json,
        } => {
            if status {
                let status = client.janitor().await?;
                if json {
                    print_json(&status)?;
                } else {
                    crate::render::janitor_status_lines(&status, aura_model::Timestamp::now())
                        .iter()
                        .for_each(|l| println!("{l}"));
                }
                return Ok(0);
            }
            let answer = client
                .janitor_run(&aura_model::janitor::RunRequest { dry_run, tasks })
                .await?;
            if json {
                print_json(&answer)?;
            } else {
                crate::render::janitor_run_lines(&answer, dry_run)
                    .iter()
                    .for_each(|l| println!("{l}"));
            }
            // Errors met along the way make the run's exit status 1 (what was possible was done).
            Ok(u8::from(answer.reports.iter().any(|r| r.report.errors > 0)))
        }
        Command::Cancel {
            id: Some(id), wait, ..
        } => {
            let view = client.cancel(JobId(id)).await?;
            if !wait {
                println!("job {id}: {}", describe_state(&view));
                return Ok(0);
            }
            let view = wait_for(&client, view.job.id).await?;
            println!("job {id}: {}", describe_state(&view));
            Ok(0)
        }
        Command::Follow { id } => crate::follow::follow(&client, JobId(id)).await,
        Command::Wait { ids } => {
            let ids: Vec<JobId> = ids.into_iter().map(JobId).collect();
            crate::follow::wait_all(&client, &ids).await
        }
        Command::Top => {
            crate::top::run(&client).await?;
            Ok(0)
        }
        Command::Events { after, json } => {
            // The API pages by sequence number; read every page.
            let mut events = Vec::new();
            let mut next = after;
            loop {
                let page = client.engine_events(next).await?;
                let Some(last) = page.last() else { break };
                next = last.seq;
                events.extend(page);
            }
            if json {
                print_json(&events)?;
            } else {
                for e in &events {
                    let (kind, detail) = event_parts(&e.event);
                    let detail = describe_event(&kind, &detail);
                    println!("{:>6}  {}  {kind:<18} {detail}", e.seq, e.at);
                }
            }
            Ok(0)
        }
        Command::Nodes { json } => {
            let list = client.nodes().await?;
            if json {
                print_json(&list)?;
            } else {
                for line in crate::render::node_table(&list) {
                    println!("{line}");
                }
            }
            Ok(0)
        }
        Command::Status { json } => {
            let status = client.status().await?;
            let utilization = client.utilization().await?;
            if json {
                print_json(&serde_json::json!({ "engine": status, "utilization": utilization }))?;
            } else {
                print_status(&status, &utilization);
            }
            Ok(0)
        }
    }
}

/// The token client commands send: `--token`/`AURA_TOKEN`, else the local daemon's for `--server`.
fn client_token(args: &Args) -> Option<String> {
    args.token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| aura::runtime::find_token(&args.server))
}

fn token_command(args: &Args, action: Option<&TokenAction>) -> anyhow::Result<u8> {
    match action {
        None => {
            let token = client_token(args).with_context(|| {
                format!(
                    "no API token for {}: is `aura serve` running there as this user? Else pass                      --token or set AURA_TOKEN",
                    args.server
                )
            })?;
            println!("{token}");
        }
        Some(TokenAction::Create {
            name,
            scope,
            max_queued,
        }) => {
            let token = aura_server::auth::generate_token()?;
            let hash: String = aura_server::auth::TokenHash::of(&token).into();
            let config = aura_server::auth::TokenConfig {
                name: name.clone(),
                hash: aura_server::auth::TokenHash::of(&token),
                scopes: vec![*scope],
                max_queued: *max_queued,
            };
            // The same checks the daemon makes at start-up, before anyone copies the lines.
            aura_server::auth::Tokens::new(std::slice::from_ref(&config))?;
            println!("{token}");
            eprintln!(
                "Keep the token above secret; give it to the client (--token or AURA_TOKEN)."
            );
            eprintln!("Add these lines to the daemon's config file (it stores only the hash):\n");
            eprintln!("[[api.tokens]]");
            eprintln!("name = {name:?}");
            eprintln!("hash = {hash:?}");
            eprintln!("scopes = [{:?}]", scope.as_str());
            if let Some(max) = max_queued {
                eprintln!("max_queued = {max}");
            }
        }
    }
    Ok(0)
}

/// The backend's line: its name, then what the supervisor's description says beyond it.
fn backend_line(status: &aura_model::EngineStatus) -> String {
    let name = status.backend.to_string();
    let detail = status.backend_detail.trim();
    let rest = detail
        .strip_prefix(&format!("backend={name}"))
        .unwrap_or(detail)
        .trim();
    if rest.is_empty() {
        name
    } else {
        format!("{name} {rest}")
    }
}

fn print_status(status: &aura_model::EngineStatus, u: &aura_model::Utilization) {
    let bytes = |b: u64| ByteSize(b).to_string();
    println!("backend:        {}", backend_line(status));
    println!("accepting:      {}", status.accepting);
    println!(
        "running:        {} of max_concurrent {}",
        u.running, u.max_concurrent
    );
    println!("queued:         {}", u.queued);
    if status.store_degraded {
        println!(
            "database:       cannot commit (its volume is full or failing): submissions refused, {} state changes kept in memory",
            status.kept_writes
        );
    }
    if !status.quarantined.is_empty() {
        let ids: Vec<String> = status.quarantined.iter().map(|id| id.to_string()).collect();
        println!(
            "quarantined:    jobs {} (running at repeated unclean daemon deaths; `aura show ID`)",
            ids.join(", ")
        );
    }
    println!(
        "memory:         {} reserved of {} ({} available; {} jobs at the default request)",
        bytes(u.reserved_memory_bytes),
        bytes(u.capacity.memory_bytes),
        bytes(u.available_memory_bytes),
        u.max_jobs_at_default_request
    );
    println!(
        "cpu:            {:.2} of {:.2} cores reserved",
        u.reserved_cpu_cores,
        u.capacity.cpu_millis as f64 / 1000.0
    );
    println!(
        "disk:           {} reserved of {}",
        bytes(u.reserved_disk_bytes),
        bytes(u.capacity.disk_bytes)
    );
    for (name, l) in &u.limits {
        let max = l
            .max_concurrent
            .map_or("unlimited".to_owned(), |m| m.to_string());
        let rate = l
            .per_minute
            .map_or(String::new(), |r| format!(", at most {r} starts/min"));
        println!("limit {name:<9} {} of {max} in use{rate}", l.in_use);
    }
    let share = |v: Option<f64>| v.map_or("?".to_owned(), |x| format!("{:.0} %", x * 100.0));
    if let Some(host) = &u.host {
        println!(
            "host:           {} memory available, memory pressure {} (PSI some avg10), {} CPU used outside Aura",
            share(host.available_memory),
            host.memory_pressure.map_or("?".to_owned(), |p| format!("{p:.1} %")),
            share(host.outside_cpu)
        );
    }
    match u.paused_reason.as_deref().or(status.paused.as_deref()) {
        Some(reason) => println!("admission:      paused: {reason}"),
        None => println!("admission:      open"),
    }
    for line in crate::render::node_lines(status) {
        println!("{line}");
    }
    println!(
        "memory guard:   {}; since start-up {} over their limit, {} OOM-killed, {} stopped for pressure",
        if u.memory_critical { "CRITICAL (the pressure responder is armed)" } else { "normal" },
        u.memory_limit_kills,
        u.oom_kills,
        u.pressure_victims
    );
}

fn init_logging(format: aura::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AURA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        aura::config::LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // Flattened: `message` and the event's fields (`job_id`, …) at the top level, where log
        // shippers look; the spans it happened in under `span` and `spans`.
        aura::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_ansi(false)
            .try_init(),
    };
}

/// `aura config`: the effective configuration with sources, as JSON, or the documented example.
fn config_command(file: Option<&std::path::Path>, json: bool, example: bool) -> anyhow::Result<u8> {
    if example {
        print!("{}", aura::config_doc::example()?);
        return Ok(0);
    }
    let effective = aura::config_doc::Effective::load(file)?;
    if json {
        print_json(&effective.to_json())?;
    } else {
        print!("{}", effective.to_toml());
    }
    Ok(0)
}

/// `aura man`: aura(1) on stdout, or every page (aura.1, aura-<command>.1) into `dir`.
fn man_command(dir: Option<&std::path::Path>) -> anyhow::Result<u8> {
    let command = Args::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            std::io::stdout().write_all(&page)?;
        }
    }
    Ok(0)
}

async fn submit_job(client: &Client, args: SubmitArgs) -> anyhow::Result<u8> {
    if let Some(path) = &args.from {
        return submit_batch(client, path, &args).await;
    }
    let mut argv = Vec::with_capacity(args.command.len());
    for (i, arg) in args.command.into_iter().enumerate() {
        match arg.into_string() {
            Ok(s) => argv.push(s),
            Err(raw) => bail!(
                "{} {:?} is not valid UTF-8; Aura stores commands as UTF-8 text",
                if i == 0 {
                    "the program".to_owned()
                } else {
                    format!("argument {i}")
                },
                raw
            ),
        }
    }
    let mut argv = argv.into_iter();
    let Some(program) = argv.next() else {
        bail!("no program given: aura submit -- PROGRAM ARGS...")
    };
    let mut spec = JobSpec::new(program, argv);
    if let Some(timeout) = args.timeout {
        spec.timeout = timeout;
    }
    spec.resources.memory = args.memory;
    spec.resources.memory_max = args.memory_max;
    spec.resources.cpu = args.cpu;
    spec.resources.gpus = args.gpus;
    spec.resources.disk = args.disk;
    spec.resources.providers = args.providers.into_iter().collect();
    spec.priority = args.priority;
    spec.labels = args.labels.into_iter().collect();
    spec.env = args.env.into_iter().collect();
    spec.secrets = args.secrets.into_iter().collect();
    if let Some(cwd) = args.cwd {
        spec.cwd = Some(
            std::path::absolute(&cwd)
                .with_context(|| format!("invalid --cwd {}", cwd.display()))?,
        );
    }
    if let Some(stop) = args.stop {
        spec.stop = stop;
    }
    spec.retry = RetryPolicy {
        max_retries: args.retries,
        ..RetryPolicy::default()
    };
    spec.after = args.after.iter().copied().map(JobId).collect();
    spec.inputs = args.inputs.into_iter().collect();
    spec.expected_duration = args.expected_duration;
    spec.stall_after = args.stall_after;
    if let Some(mode) = args.progress {
        spec.progress = mode;
    }
    let view = client.submit(&spec).await?;
    let id = view.job.id;
    if args.quiet {
        println!("{id}");
    } else {
        println!("submitted job {id}");
    }
    if args.follow {
        return crate::follow::follow(client, id).await;
    }
    if !args.wait {
        return Ok(0);
    }
    let view = wait_for(client, id).await?;
    if !args.quiet {
        eprintln!("job {id}: {}", describe_state(&view));
    }
    Ok(crate::follow::exit_code(&view))
}

/// The most a `--from` file may hold: a batch is at most 1,000 jobs, each far below this on average.
const MAX_BATCH_FILE: u64 = 16 * 1024 * 1024;

/// `aura submit --from FILE`: checks every line locally (so a mistake is reported with its line and
/// nothing is sent), then submits them as one batch.
async fn submit_batch(
    client: &Client,
    path: &std::path::Path,
    args: &SubmitArgs,
) -> anyhow::Result<u8> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let what = if path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(MAX_BATCH_FILE + 1)
            .read_to_end(&mut bytes)
            .context("cannot read the jobs from stdin")?;
        "stdin".to_owned()
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_BATCH_FILE + 1).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", path.display()))?;
        path.display().to_string()
    };
    if bytes.len() as u64 > MAX_BATCH_FILE {
        bail!(
            "{what} is larger than {} MiB: no batch is that large",
            MAX_BATCH_FILE >> 20
        );
    }
    let text = String::from_utf8(bytes).with_context(|| format!("{what} is not UTF-8 text"))?;
    let entries = aura_model::batch::jsonl_entries(&text).with_context(|| what.clone())?;
    let checked = aura_model::batch::parse(entries.clone()).with_context(|| what.clone())?;
    let jobs = client.submit_batch(entries).await?;
    if args.quiet {
        for job in &jobs {
            println!("{}", job.id);
        }
    } else {
        println!("submitted {} jobs", jobs.len());
        println!("{:>6}  {:<16}  COMMAND", "ID", "NAME");
        for (job, entry) in jobs.iter().zip(&checked) {
            let mut command = job.spec.command_line();
            if command.chars().count() > 60 {
                command = command.chars().take(59).collect::<String>() + "…";
            }
            let name = entry.name.as_deref().unwrap_or("-");
            println!("{:>6}  {name:<16}  {command}", job.id.0);
        }
    }
    if args.wait || args.follow {
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        return crate::follow::wait_all(client, &ids).await;
    }
    Ok(0)
}

/// What `aura pause`, `resume`, `hold` and `release` print: the job's state after the action.
fn acted(id: i64, view: JobView) -> anyhow::Result<u8> {
    println!("job {id}: {}", describe_state(&view));
    Ok(0)
}

/// What `aura drain` and `aura undrain` print: the node as it is now.
fn node(status: aura_model::EngineStatus) -> anyhow::Result<u8> {
    for line in crate::render::node_lines(&status) {
        println!("{line}");
    }
    Ok(0)
}

/// `aura cancel --all` and `aura kill --all`: a dry run first, for the count; on a terminal, a question
/// unless `--yes`; then the action, and how many jobs it stopped. Declining exits 1, having stopped
/// nothing.
async fn stop_selected(client: &Client, select: Selection, kill: bool) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    let mut selection = CancelSelection {
        states: select.states,
        labels: select.labels.into_iter().collect(),
        kill,
        dry_run: true,
    };
    let preview = client.cancel_where(&selection).await?;
    if preview.count == 0 {
        println!(
            "no unfinished job matches: nothing to {}",
            if kill { "kill" } else { "cancel" }
        );
        return Ok(0);
    }
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if terminal && !select.yes {
        eprint!("{} [y/N] ", crate::render::bulk_question(kill, &preview));
        std::io::stderr().flush()?;
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .context("reading the answer")?
        .context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
            eprintln!("nothing {}", if kill { "killed" } else { "cancelled" });
            return Ok(1);
        }
    }
    selection.dry_run = false;
    let done = client.cancel_where(&selection).await?;
    println!("{}", crate::render::bulk_done(kill, done.count));
    if !done.unreachable_nodes.is_empty() {
        eprintln!(
            "aura: nodes {} did not answer: their jobs were not {}; run it again once they do",
            done.unreachable_nodes.join(", "),
            if kill { "killed" } else { "cancelled" }
        );
        return Ok(1);
    }
    Ok(0)
}

/// Waits until the job has finished. A job still waiting to start after a short while says why on stderr
/// (and again whenever the reason changes), so a wait held by a paused admission, a drained node or a
/// busy limit is not silent.
async fn wait_for(client: &Client, id: JobId) -> anyhow::Result<JobView> {
    let mut told: Option<String> = None;
    let mut window = Duration::from_secs(2);
    loop {
        let view = client.wait(id, window).await?;
        if view.job.outcome().is_some() {
            return Ok(view);
        }
        let unstarted = matches!(view.job.state.name(), StateName::Queued | StateName::Held);
        let waiting = view.waiting.filter(|_| unstarted);
        if let Some(reason) = waiting.as_ref().filter(|_| waiting != told) {
            eprintln!("aura: job {id} waits: {reason}");
        }
        // While it waits to start, look again soon for a changed reason; once it runs, only its end matters.
        window = Duration::from_secs(if unstarted { 2 } else { 60 });
        told = waiting;
    }
}

async fn print_logs(
    client: &Client,
    id: JobId,
    streams: &[&str],
    follow: bool,
) -> anyhow::Result<()> {
    let mut offsets = vec![0u64; streams.len()];
    loop {
        // Read the state before the logs: output written before the job finished is then surely read.
        let finished = !follow || client.get(id).await?.job.outcome().is_some();
        loop {
            let mut progressed = false;
            for (stream, offset) in streams.iter().zip(offsets.iter_mut()) {
                let chunk = client.logs(id, stream, *offset).await?;
                if *offset == 0 && chunk.truncated_bytes > 0 {
                    eprintln!(
                        "[aura: {} oldest bytes of {stream} were dropped by the log size cap]",
                        chunk.truncated_bytes
                    );
                }
                if !chunk.data.is_empty() {
                    progressed = true;
                    if *stream == "stderr" {
                        std::io::stderr().write_all(&chunk.data)?;
                    } else {
                        std::io::stdout().write_all(&chunk.data)?;
                    }
                }
                *offset = chunk.next_offset;
            }
            if !progressed {
                break;
            }
        }
        std::io::stdout().flush()?;
        if finished {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn print_table(jobs: &[JobView]) {
    for line in crate::render::job_table(jobs, Timestamp::now()) {
        println!("{line}");
    }
}

fn print_job(view: &JobView, events: &[aura_model::JobEventRecord]) {
    let job = &view.job;
    println!(
        "Job {}: {} (attempt {})",
        job.id,
        describe_state(view),
        job.attempt
    );
    println!("  Command:    {}", job.spec.command_line());
    println!("  Submitted:  {}", job.submitted_at);
    if let Some(node) = &job.node {
        println!("  Node:       {node}");
    }
    if let Some(run) = job.state.run() {
        println!("  Started:    {}", run.started_at);
        println!(
            "  Backend:    {} (pid {}, cgroups: {})",
            run.tree.backend,
            run.tree.pid,
            if run.tree.cgroups.is_empty() {
                "none".to_owned()
            } else {
                run.tree
                    .cgroups
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        println!("  Directory:  {}", run.cwd.display());
    }
    if let Some(d) = crate::render::duration_of(view, Timestamp::now()) {
        println!("  Duration:   {:.3}s", d.as_secs_f64());
    }
    if let Some(paused) = crate::render::paused_time(&job.state, Timestamp::now()) {
        println!("  Paused:     {paused}");
    }
    if let Some(links) = crate::render::retry_links(job) {
        println!("  Retry:      {links}");
    }
    match &job.state {
        JobState::Finished(f) => {
            println!("  Finished:   {}", f.finished_at);
            if let Some(exit) = f.exit {
                println!(
                    "  Exit:       {}",
                    match exit {
                        ExitStatus::Code(c) => format!("code {c}"),
                        ExitStatus::Signal(s) => format!("signal {s}"),
                    }
                );
            }
            if !f.signals_sent.is_empty() {
                println!(
                    "  Stop:       {}",
                    f.signals_sent
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(" → ")
                );
            }
            let a = &f.accounting;
            if f.run.is_some() {
                println!("  Memory:     {}", a.memory_line());
                if let Some(cache) = a.page_cache_end.filter(|c| c.bytes() > 0) {
                    println!("  Page cache: {cache} left charged when it ended (its file I/O; reclaimable, not its memory)");
                }
                if let Some(limit) = a.memory_limit {
                    println!(
                        "  Limit:      {limit}{}",
                        if a.memory_limit_exceeded {
                            " — exceeded, the tree was killed"
                        } else {
                            ""
                        }
                    );
                }
                if a.oom_kills > 0 {
                    println!("  OOM kills:  {} (the kernel's OOM killer)", a.oom_kills);
                }
                let secs = |s: Option<f64>| s.map_or("?".into(), |s| format!("{s:.2}s"));
                println!(
                    "  CPU:        user {}, system {}; peak processes {}",
                    secs(a.cpu_user_secs),
                    secs(a.cpu_system_secs),
                    a.peak_processes.map_or("?".into(), |p| p.to_string())
                );
                if a.log_truncated_bytes > 0 {
                    println!(
                        "  Logs:       {} oldest bytes dropped by the size cap",
                        a.log_truncated_bytes
                    );
                }
                if a.log_dropped_bytes > 0 {
                    println!(
                        "  Logs:       {} bytes dropped: the log volume refused them (see the gap notes in the log)",
                        a.log_dropped_bytes
                    );
                }
            }
        }
        _ => {
            if let Some(waiting) = &view.waiting {
                println!("  Waiting:    {waiting}");
            }
            if let Some(live) = &view.live {
                let mb = |b: Option<u64>| {
                    b.map_or("?".into(), |b| format!("{:.1}MB", ByteSize(b).mib()))
                };
                println!(
                    "  Live:       memory {} (peak {}), {} processes",
                    mb(live.memory_current),
                    mb(live.memory_peak),
                    live.processes
                );
            }
        }
    }
    let spec = &job.spec;
    println!("  Timeout:    {}", humantime::format_duration(spec.timeout));
    println!("  Priority:   {}", spec.priority);
    if !spec.labels.is_empty() {
        println!(
            "  Labels:     {}",
            spec.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(m) = &job.memory_request {
        let source = match &m.source {
            aura_model::RequestSource::Stated => "stated".to_owned(),
            aura_model::RequestSource::Default => "default: no history for its kind".to_owned(),
            aura_model::RequestSource::Pressure {
                previous_bytes,
                peak_bytes,
            } => format!(
                "raised after a memory pressure stop: was {}, peak {}",
                ByteSize(*previous_bytes),
                ByteSize(*peak_bytes)
            ),
            aura_model::RequestSource::Learned {
                kind,
                samples,
                percentile_bytes,
            } => format!(
                "learned from {samples} runs of kind {kind}: p95 {}",
                ByteSize(*percentile_bytes)
            ),
            aura_model::RequestSource::Overrun {
                kind,
                observed_bytes,
            } => format!(
                "a running job of kind {kind} was seen using {}, over its request",
                ByteSize(*observed_bytes)
            ),
        };
        println!("  Reserves:   {} of memory ({source})", m.bytes);
    }
    let r = &spec.resources;
    if r.memory.is_some() || r.cpu.is_some() || r.gpus.is_some() {
        println!(
            "  Requests:   memory {}, cpu {}, gpus {}",
            r.memory.map_or("-".into(), |m| m.to_string()),
            r.cpu.map_or("-".into(), |c| c.to_string()),
            r.gpus.map_or("-".into(), |g| g.to_string())
        );
    }
    if !events.is_empty() {
        println!("  Events:");
        for e in events {
            let (kind, detail) = event_parts(&e.event);
            let detail = describe_event(&kind, &detail);
            println!("    {}  #{}  {kind:<16} {detail}", e.at, e.attempt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_help_lists_no_client_option() {
        use clap::CommandFactory;
        let mut command = Args::command();
        command.build();
        let serve = command.find_subcommand_mut("serve").expect("serve");
        let help = serve.render_long_help().to_string();
        assert!(help.contains("--data-dir"), "{help}");
        assert!(
            !help.contains("--server") && !help.contains("--token"),
            "{help}"
        );
        let jobs = command.find_subcommand_mut("jobs").expect("jobs");
        let help = jobs.render_long_help().to_string();
        assert!(
            help.contains("--server") && help.contains("--token"),
            "{help}"
        );
    }

    fn submit_cpu(value: &str) -> Result<Option<f64>, String> {
        let args = Args::try_parse_from(["aura", "submit", "--cpu", value, "--", "true"])
            .map_err(|e| e.to_string())?;
        match args.command {
            Command::Submit(submit) => Ok(submit.cpu),
            other => Err(format!("parsed as {other:?}")),
        }
    }

    #[test]
    fn submit_takes_dependencies_progress_options_or_a_batch_file() {
        let args = Args::try_parse_from([
            "aura",
            "submit",
            "--after",
            "3",
            "--after",
            "4",
            "--progress",
            "ffmpeg_stderr",
            "--expected-duration",
            "90s",
            "--stall-after",
            "2m",
            "--follow",
            "--",
            "ffmpeg",
            "-i",
            "x",
        ])
        .expect("parses");
        let Command::Submit(submit) = args.command else {
            panic!("not submit")
        };
        assert_eq!(submit.after, [3, 4]);
        assert_eq!(submit.progress, Some(ProgressMode::FfmpegStderr));
        assert_eq!(submit.expected_duration, Some(Duration::from_secs(90)));
        assert_eq!(submit.stall_after, Some(Duration::from_secs(120)));
        assert!(submit.follow);

        let err = Args::try_parse_from(["aura", "submit", "--progress", "fast", "--", "x"])
            .expect_err("no such mode")
            .to_string();
        assert!(
            err.contains("auto, ffmpeg, ffmpeg_stderr, aura or none"),
            "{err}"
        );

        let args =
            Args::try_parse_from(["aura", "submit", "--from", "-", "--quiet"]).expect("parses");
        assert!(
            matches!(args.command, Command::Submit(s) if s.from.is_some() && s.command.is_empty())
        );
        for extra in [&["--", "true"][..], &["--priority", "3"], &["--after", "1"]] {
            let mut argv = vec!["aura", "submit", "--from", "jobs.jsonl"];
            argv.extend(extra);
            assert!(Args::try_parse_from(&argv).is_err(), "{argv:?}");
        }
        assert!(
            Args::try_parse_from(["aura", "submit"]).is_err(),
            "a program or --from"
        );
        assert!(
            Args::try_parse_from(["aura", "wait"]).is_err(),
            "at least one id"
        );
    }

    #[test]
    fn operator_commands_parse_as_the_api_names_them() {
        let parse = |argv: &[&str]| {
            let mut full = vec!["aura"];
            full.extend(argv);
            Args::try_parse_from(full).map(|a| a.command)
        };
        assert!(matches!(
            parse(&["priority", "7", "-5"]),
            Ok(Command::Priority {
                id: 7,
                priority: -5
            })
        ));
        assert!(matches!(
            parse(&["priority", "7", "12"]),
            Ok(Command::Priority {
                id: 7,
                priority: 12
            })
        ));
        assert!(parse(&["priority", "7"]).is_err(), "a priority is needed");
        assert!(parse(&["priority", "7", "high"]).is_err());
        for (argv, id) in [
            (["pause", "3"], 3),
            (["resume", "4"], 4),
            (["hold", "5"], 5),
            (["release", "6"], 6),
        ] {
            let command = parse(&argv).expect("parses");
            let parsed = match command {
                Command::Pause { id }
                | Command::Resume { id }
                | Command::Hold { id }
                | Command::Release { id } => id,
                other => panic!("{argv:?} parsed as {other:?}"),
            };
            assert_eq!(parsed, id);
        }
        assert!(matches!(
            parse(&["retry", "7", "--quiet"]),
            Ok(Command::Retry { id: 7, quiet: true })
        ));
        assert!(matches!(parse(&["drain"]), Ok(Command::Drain)));
        assert!(matches!(parse(&["undrain"]), Ok(Command::Undrain)));
        assert!(matches!(
            parse(&["nodes", "--json"]),
            Ok(Command::Nodes { json: true })
        ));
        assert!(matches!(
            parse(&["nodes"]),
            Ok(Command::Nodes { json: false })
        ));
        assert!(matches!(
            parse(&["list", "--state", "paused", "--state", "held"]),
            Ok(Command::Jobs { state, .. }) if state == ["paused", "held"]
        ));
        assert!(matches!(
            parse(&["jobs", "--label", "project=trailer", "--label", "kind=a=b"]),
            Ok(Command::Jobs { labels, .. })
                if labels == [("project".to_owned(), "trailer".to_owned()), ("kind".to_owned(), "a=b".to_owned())]
        ));
        assert!(parse(&["jobs", "--label", "novalue"]).is_err());
    }

    #[test]
    fn operator_file_commands_parse() {
        use aura::config::LogFormat;
        let parse = |argv: &[&str]| {
            let mut full = vec!["aura"];
            full.extend(argv);
            Args::try_parse_from(full).map(|a| a.command)
        };
        assert!(matches!(
            parse(&["serve", "--log-format", "json"]),
            Ok(Command::Serve {
                log_format: Some(LogFormat::Json),
                ..
            })
        ));
        assert!(parse(&["serve", "--log-format", "xml"]).is_err());
        assert!(matches!(
            parse(&["config", "--json"]),
            Ok(Command::Config {
                json: true,
                example: false,
                ..
            })
        ));
        // The example is documentation, not a view of sources: no JSON form.
        assert!(parse(&["config", "--example", "--json"]).is_err());
        assert!(matches!(
            parse(&["completions", "zsh"]),
            Ok(Command::Completions {
                shell: clap_complete::Shell::Zsh
            })
        ));
        assert!(matches!(
            parse(&["man", "--dir", "out"]),
            Ok(Command::Man { dir: Some(_) })
        ));
        Args::command().debug_assert();
    }

    #[test]
    fn files_in_and_out_parse() {
        let parse = |argv: &[&str]| {
            let mut full = vec!["aura"];
            full.extend(argv);
            Args::try_parse_from(full).map(|a| a.command)
        };
        let id = "ab".repeat(32);
        let input = format!("in.mov={id}");
        let Ok(Command::Submit(submit)) = parse(&["submit", "--input", &input, "--", "true"])
        else {
            panic!("submit --input");
        };
        assert_eq!(submit.inputs.len(), 1);
        assert_eq!(submit.inputs[0].0, "in.mov");
        for bad in [format!("a/b={id}"), "in.mov=xyz".to_owned(), id.clone()] {
            assert!(
                parse(&["submit", "--input", &bad, "--", "true"]).is_err(),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(&["upload", "in.mov", "-q"]),
            Ok(Command::Upload { quiet: true, .. })
        ));
        assert!(matches!(
            parse(&["fetch", "6"]),
            Ok(Command::Fetch {
                id: 6,
                path: None,
                ..
            })
        ));
        assert!(matches!(
            parse(&["fetch", "6", "sub/out.mp4", "-o", "-"]),
            Ok(Command::Fetch {
                path: Some(_),
                output: Some(_),
                ..
            })
        ));
        // -o names where a file goes: without a file, there is none.
        assert!(parse(&["fetch", "6", "-o", "x"]).is_err());
    }

    #[test]
    fn cancel_and_kill_take_one_id_or_a_selection() {
        let parse = |argv: &[&str]| {
            let mut full = vec!["aura"];
            full.extend(argv);
            Args::try_parse_from(full).map(|a| a.command)
        };
        assert!(matches!(
            parse(&["cancel", "3"]),
            Ok(Command::Cancel {
                id: Some(3),
                wait: false,
                select: Selection { all: false, .. }
            })
        ));
        assert!(matches!(
            parse(&["kill", "3"]),
            Ok(Command::Kill { id: Some(3), .. })
        ));
        let Ok(Command::Kill { id: None, select }) = parse(&[
            "kill",
            "--all",
            "--state",
            "queued,held",
            "--state",
            "running",
            "--label",
            "kind=encode",
            "--yes",
        ]) else {
            panic!("kill --all does not parse")
        };
        assert_eq!(
            select.states,
            [StateName::Queued, StateName::Held, StateName::Running]
        );
        assert_eq!(select.labels, [("kind".to_owned(), "encode".to_owned())]);
        assert!(select.all && select.yes);
        for bad in [
            &["cancel"][..],
            &["kill"],
            &["cancel", "3", "--all"],
            &["cancel", "--all", "--wait"],
            &["cancel", "--state", "queued"],
            &["kill", "3", "--label", "a=b"],
            &["cancel", "3", "--yes"],
            &["kill", "--all", "--state", "finished"],
            &["kill", "--all", "--state", "asleep"],
            &["cancel", "--all", "--label", "novalue"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parses");
        }
        let err = parse(&["kill", "--all", "--state", "finished"])
            .expect_err("refused")
            .to_string();
        assert!(err.contains("cannot be stopped"), "{err}");
    }

    #[test]
    fn help_gives_every_operator_command_its_line() {
        use clap::CommandFactory;
        let help = Args::command().render_help().to_string();
        for (command, words) in [
            ("pause", "Freeze a running job"),
            ("resume", "Thaw a paused job"),
            ("hold", "Keep a queued job from starting"),
            ("release", "Let a held job start again"),
            ("kill", "Kill a job: SIGKILL"),
            ("retry", "Run a finished job's spec again"),
            ("priority", "Give a job that has not started a new priority"),
            ("drain", "Drain the node"),
            ("undrain", "Undrain the node"),
            ("cancel", "Stop a job"),
        ] {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{command} ")))
                .unwrap_or_else(|| panic!("no {command} in\n{help}"));
            assert!(line.contains(words), "{line}");
        }
    }

    #[test]
    fn cpu_must_be_a_positive_finite_number() {
        assert_eq!(submit_cpu("1.5"), Ok(Some(1.5)));
        assert_eq!(submit_cpu("0.25"), Ok(Some(0.25)));
        for bad in [
            "NaN", "nan", "inf", "-inf", "infinity", "-1", "-0.5", "0", "lots",
        ] {
            let err = submit_cpu(bad).expect_err(bad);
            assert!(err.contains("--cpu"), "{bad}: {err}");
            assert!(err.contains("cores"), "{bad}: {err}");
        }
    }
}
