//! `aura`: the daemon (`aura serve`) and the CLI that talks to it over the HTTP API.

mod cli;
mod follow;
mod render;
mod serve;
mod top;
mod transfer;

use clap::Parser;

/// glibc gives threads that allocate at the same time their own arenas (up to 8 per core) and seldom
/// returns an arena's free pages: with blocking-pool threads coming and going, the daemon's RSS would creep
/// up with every new arena. Two arenas keep allocation contention low for the few threads that allocate
/// at once, and the footprint flat.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A client command piped into `head` ends quietly when the reader goes, as other command-line tools do,
/// instead of panicking on its next write. (Rust ignores SIGPIPE; the daemon keeps it so, since a client
/// that disconnects must not kill it.)
fn restore_sigpipe() {
    // SAFETY: sets a signal disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The error and its causes on one line, as `{:#}` joins them, less a cause its parent's text already
/// quotes: library errors carry their source in their message (so that a log line of the message alone
/// keeps it) as well as in `source()`, and `{:#}` would print it twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn main() -> std::process::ExitCode {
    bound_malloc_arenas();
    let args = cli::Args::parse();
    let serve = match cli::serve_config(&args) {
        Ok(serve) => serve,
        Err(e) => {
            eprintln!("aura: {}", one_line(&e));
            return std::process::ExitCode::from(1);
        }
    };
    if serve.is_none() {
        restore_sigpipe();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(cfg) = &serve {
        builder.worker_threads(cfg.async_workers);
    }
    let runtime = match builder
        // Idle blocking threads go away soon, so the daemon's thread count returns to its baseline.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aura: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(args, serve)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("aura: {}", one_line(&e));
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// An error that quotes its source in its message and also returns it from `source()`, as the
    /// library crates' errors do.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot open job database aura.db: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let quoting = anyhow::Error::new(Quoting(std::io::Error::other("file is not a database")))
            .context("store")
            .context("cannot start the engine");
        assert_eq!(
            one_line(&quoting),
            "cannot start the engine: store: cannot open job database aura.db: file is not a database"
        );
        let plain = anyhow::anyhow!("connection refused").context("cannot reach the daemon");
        assert_eq!(
            one_line(&plain),
            "cannot reach the daemon: connection refused"
        );
    }
}
