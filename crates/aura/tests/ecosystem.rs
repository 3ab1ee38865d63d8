//! The operator-facing files and commands, checked against the built binary: shell completions and man
//! pages generated from the CLI, `aura config` (sources, redaction, errors) and the committed example
//! config, JSON logs, the systemd unit (`systemd-analyze verify`), and docs/operations.md, whose every
//! `$ aura …` command is run against a real daemon so the guide cannot rot.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Daemon, AURA};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root")
        .to_path_buf()
}

/// `aura ARGS` with no `AURA_*` variable of the environment the tests run in.
fn aura(args: &[&str]) -> Command {
    let mut cmd = Command::new(AURA);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AURA_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run aura");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("UTF-8 output")
}

/// The subcommands `aura --help` lists (clap's own `help` aside).
fn subcommands() -> Vec<String> {
    let help = stdout(&mut aura(&["--help"]));
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() > 20, "too few subcommands in --help: {names:?}");
    names
}

#[test]
fn completions_are_valid_and_name_every_command() {
    let commands = subcommands();
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout(&mut aura(&["completions", shell]));
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        for command in &commands {
            assert!(script.contains(command.as_str()), "{shell}: no {command}");
        }
        if shell == "bash" {
            let path = dir.path().join("aura.bash");
            std::fs::write(&path, &script).expect("write the script");
            let check = Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .expect("bash");
            assert!(
                check.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let bad = aura(&["completions", "tcsh"]).output().expect("run aura");
    assert!(!bad.status.success());
}

/// The page rendered as a reader sees it: by groff, else `man -l`; `None` where neither is installed.
fn render_man(page: &Path) -> Option<String> {
    let tries: [(&str, Vec<&std::ffi::OsStr>); 2] = [
        // `-P-cbou`: plain text, no bold or underline marks.
        (
            "groff",
            vec![
                "-man".as_ref(),
                "-Tutf8".as_ref(),
                "-P-cbou".as_ref(),
                page.as_os_str(),
            ],
        ),
        ("man", vec!["-l".as_ref(), page.as_os_str()]),
    ];
    for (program, args) in tries {
        let Ok(out) = Command::new(program)
            .args(&args)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
        else {
            continue;
        };
        assert!(
            out.status.success(),
            "{program} {}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    None
}

#[test]
fn man_pages_render_and_name_every_command() {
    let commands = subcommands();
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("aura.1");
    std::fs::write(&page, run(&mut aura(&["man"])).stdout).expect("write the page");
    let roff = std::fs::read_to_string(&page).expect("read the page");
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH aura 1"),
        "{roff}"
    );
    for command in &commands {
        assert!(
            roff.contains(command.as_str()),
            "aura(1) does not name {command}"
        );
    }
    match render_man(&page) {
        Some(text) => {
            assert!(text.contains("SUBCOMMANDS"), "{text}");
            for command in &commands {
                assert!(
                    text.contains(&format!("aura-{command}(1)")),
                    "rendered aura(1) does not name {command}: {text}"
                );
            }
        }
        // `cargo xtask test` installs man-db: a suite that silently checked less would pass for the wrong reason.
        None => {
            panic!("neither groff nor man is installed (Debian package man-db; `cargo xtask deps`)")
        }
    }
    // One page per command.
    let pages = dir.path().join("man1");
    run(aura(&["man", "--dir"]).arg(&pages));
    for command in &commands {
        let page = pages.join(format!("aura-{command}.1"));
        assert!(page.is_file(), "no page {}", page.display());
        if let Some(text) = render_man(&page) {
            assert!(text.contains("SYNOPSIS"), "{}: {text}", page.display());
        }
    }
}

#[test]
fn the_committed_example_config_is_current() {
    let path = workspace().join("docs/aura.example.toml");
    let generated = stdout(&mut aura(&["config", "--example"]));
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if generated != committed {
        let (line, (want, have)) = generated
            .lines()
            .chain(std::iter::repeat(""))
            .zip(committed.lines().chain(std::iter::repeat("")))
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("", "")));
        panic!(
            "{} is not what `aura config --example` prints (first difference at line {}:\n  generated: {want}\n  committed: {have})\n\
             regenerate with `aura config --example > docs/aura.example.toml`",
            path.display(),
            line + 1
        );
    }
}

#[test]
fn the_example_config_loads_and_is_named_as_the_source() {
    let path = workspace().join("docs/aura.example.toml");
    let text = stdout(aura(&["config", "--config"]).arg(&path));
    let from_file = format!("# from {}", path.display());
    assert!(
        text.contains(&format!("listen = \"127.0.0.1:7411\"  {from_file}")),
        "{text}"
    );
    assert!(text.contains("max_concurrent = "), "{text}");
    // Every key the file sets is shown as coming from it.
    let set_in_file = std::fs::read_to_string(&path)
        .expect("read the example")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" = "))
        .count();
    assert_eq!(text.matches(&from_file).count(), set_in_file, "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&run(aura(&["config", "--json", "--config"]).arg(&path)).stdout)
            .expect("JSON");
    assert_eq!(json["guards.throttle.cpu_share"]["source"], "file");
    assert_eq!(
        json["guards.throttle.cpu_share"]["from"],
        path.display().to_string()
    );
    assert_eq!(json["max_concurrent"]["source"], "default");
}

#[test]
fn config_shows_sources_redacts_secrets_and_refuses_bad_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = format!("sha256:{}", "cd".repeat(32));
    let file = dir.path().join("aura.toml");
    std::fs::write(
        &file,
        format!(
            "max_concurrent = 3\n[[api.tokens]]\nname = \"ci\"\nhash = \"{hash}\"\nscopes = [\"submit\"]\n\
             [jobs.env]\nSTUDIO_TOKEN = \"tok-123\"\n"
        ),
    )
    .expect("write config");
    let text = stdout(
        aura(&["config"])
            .env("AURA_CONFIG", &file)
            .env("AURA_SUPERVISOR__KILL_WAIT", "3s")
            .env("AURA_TOKEN", "aura_not_a_config_key"),
    );
    assert!(
        text.contains(&format!("max_concurrent = 3  # from {}", file.display())),
        "{text}"
    );
    assert!(
        text.contains("kill_wait = \"3s\"  # from AURA_SUPERVISOR__KILL_WAIT"),
        "{text}"
    );
    assert!(
        text.contains("data_dir = \"aura-data\"  # from default"),
        "{text}"
    );
    for secret in [hash.as_str(), "tok-123", "aura_not_a_config_key"] {
        assert!(!text.contains(secret), "{secret} printed: {text}");
    }
    assert!(text.contains("<redacted>"), "{text}");
    let json = stdout(aura(&["config", "--json", "--config"]).arg(&file));
    assert!(!json.contains(&hash) && !json.contains("tok-123"), "{json}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[supervisor]\nbackend = \"cgroup_v9\"\n").expect("write config");
    let out = aura(&["config", "--config"])
        .arg(&bad)
        .output()
        .expect("run aura");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("backend"), "{err}");
    let out = aura(&["config", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .expect("run aura");
    assert!(!out.status.success());
    let out = aura(&["config"])
        .env("AURA_MAX_CONCURRENT", "0")
        .output()
        .expect("run aura");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_concurrent"),
        "{err}"
    );
}

/// `bash -o pipefail -c LINE` as an operator would type it against `daemon`, in `cwd`, with `aura` on
/// the PATH; killed after a minute.
fn shell(line: &str, daemon: &Daemon, cwd: &Path) -> Output {
    let bin = Path::new(AURA).parent().expect("the binary's directory");
    let path = std::env::join_paths(std::iter::once(bin.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let mut cmd = Command::new("bash");
    cmd.args(["-o", "pipefail", "-c", line]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AURA_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .env("PATH", path)
        .env("AURA_SERVER", &daemon.url)
        .env("AURA_RUNTIME_DIR", daemon.runtime_dir())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bash");
    // Read both pipes on threads, so a chatty command never blocks on a full pipe while we wait.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`{line}` did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// The fenced blocks of a Markdown text: (info string, first line number, lines).
fn fenced_blocks(text: &str) -> Vec<(String, usize, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, Vec<String>)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), i + 2, Vec::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, _, lines)), None) => lines.push(line.to_owned()),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code fence");
    blocks
}

#[test]
fn every_command_of_the_operations_guide_runs() {
    let guide_path = workspace().join("docs/operations.md");
    let guide = std::fs::read_to_string(&guide_path).expect("docs/operations.md");
    let blocks = fenced_blocks(&guide);

    // Shell snippets (systemctl, journalctl, …) are not run, only parsed.
    let mut sh_blocks = 0;
    for (info, line, lines) in blocks.iter().filter(|(info, ..)| info == "sh") {
        let check = Command::new("bash")
            .args(["-n", "-c", &lines.join("\n")])
            .output()
            .expect("bash");
        assert!(
            check.status.success(),
            "docs/operations.md:{line} ({info} block): {}",
            String::from_utf8_lossy(&check.stderr)
        );
        sh_blocks += 1;
    }
    assert!(sh_blocks > 0);

    let commands: Vec<(usize, String)> = blocks
        .iter()
        .filter(|(info, ..)| info == "console")
        .flat_map(|(_, first, lines)| {
            lines
                .iter()
                .enumerate()
                .filter_map(move |(i, l)| Some((first + i, l.strip_prefix("$ ")?.to_owned())))
        })
        .collect();
    assert!(commands.len() >= 10, "too few commands: {commands:?}");
    for (line, command) in &commands {
        assert!(
            command == "aura" || command.starts_with("aura "),
            "docs/operations.md:{line}: `{command}` is not an aura command: put it in an sh block"
        );
    }

    let daemon = Daemon::start(&[]);
    // The commands find this token themselves, through the runtime file, as an operator's CLI does.
    assert!(daemon.token.starts_with("aura_"));
    let scratch = tempfile::tempdir().expect("tempdir");
    let submitted = shell(
        "aura submit --quiet -- sh -c 'echo rendered frame 1; echo progress >&2'",
        &daemon,
        scratch.path(),
    );
    assert!(submitted.status.success(), "{submitted:?}");
    let job = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
    assert!(job.parse::<u64>().is_ok(), "not a job id: {job}");
    let waited = shell(&format!("aura wait {job}"), &daemon, scratch.path());
    assert!(waited.status.success(), "{waited:?}");

    for (line, command) in &commands {
        let command = command.replace("JOB", &job);
        let out = shell(&command, &daemon, scratch.path());
        assert!(
            out.status.success(),
            "docs/operations.md:{line}: `{command}` exited with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every complete line of `log` parsed as JSON; panics naming a line that is not.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| {
            let value: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
            for key in ["timestamp", "level", "target"] {
                assert!(value.get(key).is_some(), "no {key}: {l}");
            }
            value
        })
        .collect()
}

#[test]
fn json_logs_carry_the_job_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("daemon.log");
    let env = [("AURA_LOG", "info"), ("AURA_LOG__FORMAT", "json")];
    let daemon = Daemon::start_logged(&env, Some(&log));
    let out = shell("aura submit --quiet --wait -- true", &daemon, dir.path());
    assert!(out.status.success(), "{out:?}");
    let job = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).expect("read the log");
        let lines = json_lines(&text);
        assert!(
            lines.iter().all(|l| l.get("message").is_some()),
            "a line without message: {text}"
        );
        let with_job = lines
            .iter()
            .any(|l| l.get("job_id").and_then(|v| v.as_str()) == Some(job.as_str()));
        if with_job {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no line with job_id {job}: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_log_format_flag_switches_to_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = aura(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--data-dir",
    ])
    .arg(dir.path().join("data"))
    .env("AURA_LOG", "info")
    .env("AURA_RUNTIME_DIR", dir.path().join("runtime"))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn aura serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let listening = lines.any(|l| l.is_ok_and(|l| l.starts_with("aura serve: listening on ")));
    assert!(listening, "aura serve exited before listening");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    let out = child.wait_with_output().expect("wait for aura serve");
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&String::from_utf8_lossy(&out.stderr));
    assert!(
        lines.iter().any(|l| l["message"] == "shutdown complete"),
        "{lines:?}"
    );
    let bad = aura(&["serve", "--log-format", "xml"])
        .output()
        .expect("run aura");
    assert!(!bad.status.success());
}

#[test]
fn the_systemd_unit_verifies() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "no systemd-analyze (Debian package systemd; `cargo xtask deps`): the unit cannot be checked"
    );
    let unit = std::fs::read_to_string(workspace().join("deploy/systemd/aura.service"))
        .expect("deploy/systemd/aura.service");
    for option in [
        "Delegate=yes",
        "KillMode=mixed",
        "Restart=on-failure",
        "StateDirectory=aura",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == option), "no {option}");
    }
    // Above the daemon's own bound on a shutdown (shutdown_grace + kill_wait).
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    let config: serde_json::Value =
        serde_json::from_slice(&run(&mut aura(&["config", "--json"])).stdout).expect("JSON");
    let grace =
        humantime::parse_duration(config["shutdown_grace"]["value"].as_str().expect("grace"))
            .expect("a duration");
    let kill_wait = humantime::parse_duration(
        config["supervisor.kill_wait"]["value"]
            .as_str()
            .expect("kill_wait"),
    )
    .expect("a duration");
    assert!(Duration::from_secs(stop) > grace + kill_wait + Duration::from_secs(5));

    let dir = tempfile::tempdir().expect("tempdir");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .and_then(|l| l.split_whitespace().next())
        .expect("ExecStart")
        .to_owned();
    let copy = dir.path().join("aura.service");
    std::fs::write(
        &copy,
        unit.replace(&format!("ExecStart={exec}"), &format!("ExecStart={AURA}")),
    )
    .expect("write the unit");
    // `Documentation=man:aura(1)` is checked too: against the pages `aura man --dir` writes.
    let man = dir.path().join("man");
    run(aura(&["man", "--dir"]).arg(man.join("man1")));
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .env("MANPATH", &man)
        .env("SYSTEMD_LOG_LEVEL", "info")
        .output()
        .expect("systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It may also warn about the host (other units, missing directories): only lines on this unit count.
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("aura.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify: {about_unit:#?}"
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {text}"
    );
}
