//! `aura top`: a live terminal view of the engine, like htop for jobs — running jobs with memory, CPU and
//! processes and, for jobs that report it, progress (percent, fps, speed, ETA); host CPU, memory, PSI and
//! GPUs; admission — refreshed every second from the HTTP API.

use crate::render::progress_cell;
use aura_client::{Client, JobView, ListQuery};
use aura_model::host::HostSnapshot;
use aura_model::{ByteSize, Utilization};
use crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Text};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;
use std::time::Duration;

/// Everything one screen shows: the last figures the daemon gave, or why it could not be reached.
#[derive(Default)]
pub struct TopState {
    pub server: String,
    pub host: Option<HostSnapshot>,
    pub utilization: Option<Utilization>,
    pub running: Vec<JobView>,
    /// The last refresh failed (the daemon is down or unreachable): shown instead of stale figures.
    pub error: Option<String>,
}

impl TopState {
    async fn refresh(&mut self, client: &Client) {
        let result = async {
            let host = client.system().await?;
            let utilization = client.utilization().await?;
            let query = ListQuery {
                // Paused trees still hold their memory: they stay on the screen, marked paused.
                states: vec!["running".into(), "paused".into(), "stopping".into()],
                limit: Some(200),
                ..Default::default()
            };
            let running = client.list(&query).await?.jobs;
            Ok::<_, aura_client::ClientError>((host, utilization, running))
        }
        .await;
        match result {
            Ok((host, utilization, running)) => {
                (self.host, self.utilization, self.running, self.error) =
                    (Some(host), Some(utilization), running, None)
            }
            Err(e) => {
                (self.host, self.utilization, self.running) = (None, None, Vec::new());
                // The whole cause chain, once: "cannot reach …: … Connection refused".
                self.error = Some(format!("{:#}", anyhow::Error::new(e)));
            }
        }
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{:.0}%", x * 100.0))
}

fn bytes(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |b| ByteSize(b).to_string())
}

/// The header's lines: host, GPUs, jobs and admission — or, with nothing from the daemon, why.
fn header_lines(state: &TopState) -> Vec<Line<'static>> {
    let (Some(h), Some(u)) = (&state.host, &state.utilization) else {
        let why = state
            .error
            .as_deref()
            .unwrap_or("waiting for the first answer");
        return vec![
            Line::from(format!("daemon unreachable at {}", state.server)),
            Line::from(why.to_owned()),
            Line::from("retrying every second"),
        ];
    };
    let psi = h.pressure.map(|p| p.memory.some.avg10);
    let gpus = match &h.gpus {
        Some(gpus) => gpus
            .iter()
            .map(|g| {
                format!(
                    "GPU{} {} enc {}",
                    g.index,
                    pct(g.utilization_gpu),
                    pct(g.encoder_utilization)
                )
            })
            .collect::<Vec<_>>()
            .join("  "),
        None => "no GPU".to_owned(),
    };
    let admission = match &u.paused_reason {
        Some(reason) => format!("PAUSED: {reason}"),
        None => "open".to_owned(),
    };
    let memory_guard = format!(
        "memory {}  killed: {} over limit, {} OOM, {} for pressure",
        if u.memory_critical { "CRITICAL" } else { "ok" },
        u.memory_limit_kills,
        u.oom_kills,
        u.pressure_victims
    );
    vec![
        Line::from(format!(
            "CPU {}  load {:.2}  mem {} of {} avail  PSI mem {}",
            pct(h.cpu.busy_ratio),
            h.load_average[0],
            bytes(Some(h.memory.available)),
            bytes(Some(h.memory.total)),
            pct(psi)
        )),
        Line::from(gpus),
        Line::from(format!(
            "jobs {} running, {} queued (max {})  reserved {} of {}",
            u.running,
            u.queued,
            u.max_concurrent,
            bytes(Some(u.reserved_memory_bytes)),
            bytes(Some(u.capacity.memory_bytes))
        )),
        Line::from(format!("admission {admission}  {memory_guard}")),
    ]
}

/// Draws one frame; pure, so tests render it into a buffer.
pub fn draw(frame: &mut Frame, state: &TopState) {
    let [header, jobs, footer] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let lines = header_lines(state);
    let title = format!(" aura top — {} ", state.server);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        header,
    );

    let rows = state.running.iter().map(|v| {
        let live = v.live.clone().unwrap_or_default();
        let command = v.job.spec.command_line();
        let cpu = live
            .cpu_user_secs
            .zip(live.cpu_system_secs)
            .map_or("-".to_owned(), |(a, b)| format!("{:.1}s", a + b));
        // A job that reports progress gets a second line under its command: the command column is the
        // only one wide enough for percent, fps, speed and ETA on an 80-column terminal.
        let progress = live.progress.as_ref().map(progress_cell);
        let height = if progress.is_some() { 2 } else { 1 };
        let command_cell = match progress {
            Some(progress) => Text::from(vec![Line::from(command), Line::from(progress)]),
            None => Text::from(command),
        };
        Row::new(vec![
            Cell::from(v.job.id.to_string()),
            Cell::from(v.job.state.name().as_str().to_owned()),
            Cell::from(bytes(live.memory_current)),
            Cell::from(bytes(live.memory_peak)),
            Cell::from(cpu),
            Cell::from(live.processes.to_string()),
            Cell::from(command_cell),
        ])
        .height(height)
    });
    let widths = [
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(
            Row::new(vec![
                "ID",
                "STATE",
                "MEM",
                "PEAK",
                "CPU",
                "PROC",
                "COMMAND / PROGRESS",
            ])
            .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" running jobs "),
        );
    frame.render_widget(table, jobs);
    frame.render_widget(Paragraph::new("q: quit   refreshed every second"), footer);
}

/// Runs the live view until `q`, Esc or Ctrl-C. It needs a terminal on both ends: anything else is a
/// clear error, not a screen drawn into a pipe.
pub async fn run(client: &Client) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "aura top needs a terminal (stdin and stdout); for a one-shot view use `aura status` (or `aura status --json`)"
        );
    }
    let mut terminal = ratatui::init();
    let mut state = TopState {
        server: client.base().to_owned(),
        ..Default::default()
    };
    let result = async {
        loop {
            state.refresh(client).await;
            terminal.draw(|f| draw(f, &state))?;
            // Wait up to a second for a key, off the async workers.
            let key =
                tokio::task::spawn_blocking(|| -> std::io::Result<Option<event::KeyEvent>> {
                    if event::poll(Duration::from_secs(1))? {
                        if let Event::Key(key) = event::read()? {
                            return Ok(Some(key));
                        }
                    }
                    Ok(None)
                })
                .await??;
            if let Some(key) = key {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    #[test]
    fn renders_in_an_80_by_24_terminal() {
        let job: JobView = serde_json::from_value(serde_json::json!({
            "id": 42, "submitted_at": "2026-11-22T10:00:00Z", "attempt": 1, "failures": 0,
            "spec": {"program": "ffmpeg", "args": ["-i", "in.mov", "out.mp4"]},
            "state": "running",
            "run": {"started_at": "2026-11-22T10:00:01Z", "cwd": "/tmp",
                    "tree": {"backend": "hybrid", "pid": 7, "start_ticks": 1, "cgroups": []}},
            "live": {"memory_current": 314572800, "memory_peak": 419430400, "memory_source": "cgroup_peak",
                     "cpu_user_secs": 3.0, "cpu_system_secs": 0.5, "processes": 2, "peak_processes": 2,
                     "progress": {"source": "ffmpeg_pipe", "percent": 42.4, "fps": 81.2, "speed": 2.94,
                                  "eta_secs": 65.0, "reports": 12}}
        }))
        .expect("a job view");
        let host: HostSnapshot = serde_json::from_value(serde_json::json!({
            "at": "2026-11-22T10:00:01Z",
            "cpu": {"busy_ratio": 0.5, "cores": 2, "seconds": {"user": 1.0, "nice": 0.0, "system": 1.0,
                "idle": 1.0, "iowait": 0.0, "irq": 0.0, "softirq": 0.0, "steal": 0.0}},
            "load_average": [1.0, 0.5, 0.2],
            "memory": {"total": 25_000_000_000u64, "available": 20_000_000_000u64, "used": 5_000_000_000u64,
                "free": 1_000_000_000u64, "cached": 1u64, "swap_total": 0, "swap_free": 0},
            "pressure": null, "disks": [], "networks": [], "sample_cpu_seconds": 0.001
        }))
        .expect("a host snapshot");
        let utilization: Utilization = serde_json::from_value(serde_json::json!({
            "capacity": {"memory_bytes": 24_000_000_000u64, "cpu_millis": 2000, "disk_bytes": 0, "gpus": []},
            "reserved_memory_bytes": 2147483648u64, "available_memory_bytes": 1u64,
            "reserved_cpu_cores": 0.0, "reserved_disk_bytes": 0, "running": 1, "queued": 3,
            "max_concurrent": 2, "available_slots": 1, "max_jobs_at_default_request": 2, "limits": {},
            "admission_paused": false, "memory_critical": false, "memory_limit_kills": 2,
            "oom_kills": 0, "pressure_victims": 1
        }))
        .expect("a utilization view");
        let state = TopState {
            server: "http://127.0.0.1:7411".into(),
            host: Some(host),
            utilization: Some(utilization),
            running: vec![job],
            error: None,
        };
        let screen = render(&state);
        for expected in [
            "aura top",
            "CPU 50%",
            "no GPU",
            "1 running, 3 queued",
            "admission open",
            "memory ok  killed: 2 over limit, 0 OOM, 1 for pressure",
            "ffmpeg -i in.mov",
            "300.0 MiB",
            "3.5s",
            "42% 81fps 2.9x eta 1m05s",
            "q: quit",
        ] {
            assert!(
                screen.contains(expected),
                "missing {expected:?} in\n{screen}"
            );
        }
    }

    fn render(state: &TopState) -> String {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        terminal.draw(|f| draw(f, state)).expect("draw");
        terminal
            .backend()
            .buffer()
            .content()
            .chunks(80)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect()
    }

    #[test]
    fn a_daemon_that_cannot_be_reached_is_said_so_not_shown_as_null_figures() {
        let state = TopState {
            server: "http://127.0.0.1:7411".into(),
            error: Some("connection refused".into()),
            ..Default::default()
        };
        let screen = render(&state);
        for expected in [
            "daemon unreachable at http://127.0.0.1:7411",
            "connection refused",
            "retrying every second",
        ] {
            assert!(
                screen.contains(expected),
                "missing {expected:?} in\n{screen}"
            );
        }
        assert!(!screen.contains("null"), "{screen}");
    }
}
