//! `aura`: the daemon (`aura serve`) and the CLI that talks to it over the HTTP API.

mod cli;
mod config;
mod serve;
mod top;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
    match runtime.block_on(cli::run(args)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("aura: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
