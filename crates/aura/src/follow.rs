//! Following jobs as they run: `aura follow ID` and `aura submit --follow` (one job's event stream) and
//! `aura wait ID...` (every given job over the all-jobs stream). On a terminal a progress bar, with state
//! changes printed above it; otherwise plain lines, progress at most once a second per job. A stream that
//! drops is reopened after the last event seen, a few times at most.

use crate::render::{describe_state, event_line, progress_figures, progress_line};
use aura_client::{Client, EventStream, JobView, StreamItem};
use aura_model::{JobEvent, JobId, JobState, LoggedEvent, Outcome, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Reconnections in a row, without an event between them, before giving up.
const MAX_RECONNECTS: u32 = 5;
/// The least time between two plain progress lines of one job.
const PLAIN_INTERVAL: Duration = Duration::from_secs(1);

/// Which progress updates get a plain line: at most one per job per `PLAIN_INTERVAL`, but the first one
/// that says the job is done always does (a short job's updates may all fall in its first second).
#[derive(Default)]
struct Throttle {
    jobs: HashMap<JobId, JobLines>,
}

#[derive(Default)]
struct JobLines {
    printed_at: Option<Instant>,
    printed_done: bool,
    /// The last update held back, printed when the job ends so that its last figures show.
    held: Option<Progress>,
    /// The last update printed.
    shown: Option<Progress>,
}

impl Throttle {
    /// Whether `p` gets a line now; one that does not is held for [`Throttle::take_held`].
    fn admit(&mut self, job: JobId, p: &Progress, now: Instant) -> bool {
        let lines = self.jobs.entry(job).or_default();
        let done = p.done || p.percent.is_some_and(|x| x >= 100.0);
        let due = lines
            .printed_at
            .map_or(true, |t| now.duration_since(t) >= PLAIN_INTERVAL);
        if due || (done && !lines.printed_done) {
            lines.printed_at = Some(now);
            lines.printed_done |= done;
            lines.held = None;
            lines.shown = Some(p.clone());
            true
        } else {
            lines.held = Some(p.clone());
            false
        }
    }

    /// The update held back last for `job`, once.
    fn take_held(&mut self, job: JobId) -> Option<Progress> {
        let lines = self.jobs.get_mut(&job)?;
        let held = lines.held.take()?;
        lines.shown = Some(held.clone());
        Some(held)
    }

    /// The update printed last for `job`.
    fn shown(&self, job: JobId) -> Option<&Progress> {
        self.jobs.get(&job)?.shown.as_ref()
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants: a bad one is a bug that should cost the bar its looks, not the command.
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

const SPINNER: &str = "{spinner:.green} {prefix} {wide_msg}";
const PERCENT_BAR: &str = "{spinner:.green} {prefix} [{bar:20.cyan/blue}] {wide_msg}";
const AGGREGATE_BAR: &str = "{spinner:.green} [{bar:20.cyan/blue}] {pos}/{len} done {wide_msg}";

/// Where the output goes: a bar on a terminal (state lines above it, on stderr), else plain lines on
/// stdout.
struct Display {
    bar: Option<ProgressBar>,
    /// The single-job bar shows a percent (else a spinner).
    determinate: bool,
    throttle: Throttle,
}

impl Display {
    /// A display for one job (`aggregate_of` `None`) or for `n` jobs.
    fn new(prefix: String, aggregate_of: Option<u64>) -> Display {
        use std::io::IsTerminal;
        // The bar draws on stderr and the lines above it too: both must be a terminal, else every line
        // goes to stdout as plain text.
        let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = match aggregate_of {
                Some(n) => ProgressBar::new(n).with_style(style(AGGREGATE_BAR)),
                None => ProgressBar::new(1000).with_style(style(SPINNER)),
            };
            bar.set_prefix(prefix);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Display {
            bar,
            determinate: false,
            throttle: Throttle::default(),
        }
    }

    /// A line for the record (a state change, an outcome): above the bar, or on stdout.
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    /// A remark about the connection: above the bar, or on stderr (stdout keeps the job's lines).
    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// One job's progress: the single bar's figures, or a plain line when due.
    fn progress(&mut self, job: JobId, p: &Progress) {
        match &self.bar {
            Some(bar) => {
                if let Some(percent) = p.percent {
                    if !self.determinate {
                        bar.set_style(style(PERCENT_BAR));
                        self.determinate = true;
                    }
                    // Tenths of a percent; the cast is of a value clamped to 0..=1000.
                    bar.set_position((percent.clamp(0.0, 100.0) * 10.0).round() as u64);
                }
                bar.set_message(progress_figures(p));
            }
            None => {
                if self.throttle.admit(job, p, Instant::now()) {
                    println!("{}", progress_line(job, p));
                }
            }
        }
    }

    /// The job ended: its held-back progress line, then its stored last progress if that is newer than
    /// what was shown.
    fn job_ended(&mut self, job: JobId, last: Option<&Progress>) {
        if self.bar.is_some() {
            if let Some(p) = last {
                self.progress(job, p);
            }
            return;
        }
        if let Some(held) = self.throttle.take_held(job) {
            println!("{}", progress_line(job, &held));
        }
        if let Some(p) = last {
            if self.throttle.shown(job) != Some(p) && self.throttle.admit(job, p, Instant::now()) {
                println!("{}", progress_line(job, p));
            }
        }
    }

    fn set_state(&self, text: &str) {
        if let (Some(bar), false) = (&self.bar, self.determinate) {
            bar.set_message(text.to_owned());
        }
    }

    fn aggregate(&self, done: u64, running: usize, mean_percent: Option<f64>) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            let mean = mean_percent.map_or(String::new(), |m| format!(", mean {m:.0}%"));
            bar.set_message(format!("({running} running{mean})"));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What ended one connection to a stream.
enum Ended {
    /// The job finished (a job's stream), or every job waited for did.
    Done,
    /// The server said this client fell behind: resume after this id.
    Lagged(String),
    /// The connection broke or the server closed it early.
    Dropped(anyhow::Error),
}

impl Ended {
    /// After a stream that ended short of `Done` (`what` names it in messages): counts the try, resumes
    /// a lagged one after its id, says a lost one is reopened; an error once it happened too often.
    fn retry(
        self,
        what: &str,
        after: &mut Option<String>,
        failures: &mut u32,
        display: &mut Display,
    ) -> anyhow::Result<()> {
        *failures += 1;
        match self {
            Ended::Done => {}
            Ended::Lagged(resume_after) => *after = Some(resume_after),
            Ended::Dropped(why) if *failures > MAX_RECONNECTS => {
                return Err(why.context(format!("lost {what} {MAX_RECONNECTS} times in a row")));
            }
            Ended::Dropped(why) => display.note(&format!("{what} lost ({why}); reconnecting")),
        }
        if *failures > MAX_RECONNECTS {
            anyhow::bail!("{what} kept falling behind; giving up");
        }
        Ok(())
    }
}

/// The pause before reconnection number `n` (1, 2, …): 250 ms doubling, at most 4 s.
fn backoff(n: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << n.min(4)))
}

/// The exit code of a finished job as `aura submit --wait` gives it.
pub fn exit_code(view: &JobView) -> u8 {
    let code = view.job.outcome().map_or(1, Outcome::cli_exit_code);
    u8::try_from(code.clamp(0, 255)).unwrap_or(1)
}

/// The last progress stored with a finished job.
fn final_progress(view: &JobView) -> Option<&Progress> {
    match &view.job.state {
        JobState::Finished(f) => f.accounting.progress.as_deref(),
        _ => None,
    }
}

/// `aura follow ID`: the job's events and progress until it ends; then its outcome and memory line.
/// Returns the job's exit code.
pub async fn follow(client: &Client, id: JobId) -> anyhow::Result<u8> {
    let mut display = Display::new(format!("job {id}"), None);
    let result = follow_stream(client, id, &mut display).await;
    let memory = match result {
        Ok(memory) => memory,
        Err(e) => {
            display.finish();
            return Err(e);
        }
    };
    let view = client.get(id).await;
    let view = match view {
        Ok(view) => view,
        Err(e) => {
            display.finish();
            return Err(e.into());
        }
    };
    display.job_ended(id, final_progress(&view));
    display.finish();
    println!("job {id}: {}", describe_state(&view));
    let memory = memory.or_else(|| match &view.job.state {
        JobState::Finished(f) if f.run.is_some() => Some(f.accounting.memory_line()),
        _ => None,
    });
    if let Some(memory) = memory {
        println!("job {id}: memory {memory}");
    }
    Ok(exit_code(&view))
}

/// Reads the job's stream (reconnecting) until the job has finished; returns the last `exited` event's
/// memory line.
async fn follow_stream(
    client: &Client,
    id: JobId,
    display: &mut Display,
) -> anyhow::Result<Option<String>> {
    let mut after: Option<String> = None;
    let mut memory = None;
    let mut failures = 0u32;
    loop {
        let ended = match client.job_stream(id, after.clone(), None).await {
            Ok(mut stream) => {
                let ended = read_job_stream(&mut stream, display, &mut memory, &mut failures).await;
                after = stream.last_id().map(str::to_owned).or(after);
                ended
            }
            Err(e) if e.is_transient() => Ended::Dropped(e.into()),
            Err(e) => return Err(e.into()),
        };
        if let Ended::Done = ended {
            return Ok(memory);
        }
        let what = format!("job {id}'s event stream");
        ended.retry(&what, &mut after, &mut failures, display)?;
        tokio::time::sleep(backoff(failures)).await;
    }
}

async fn read_job_stream(
    stream: &mut EventStream,
    display: &mut Display,
    memory: &mut Option<String>,
    failures: &mut u32,
) -> Ended {
    loop {
        match stream.next().await {
            Some(Ok(StreamItem::Job(record, _))) => {
                *failures = 0;
                if let JobEvent::Exited { memory: line, .. } = &record.event {
                    *memory = Some(line.clone());
                }
                display.line(&event_line(&record));
                display.set_state(&record.event.kind());
            }
            Some(Ok(StreamItem::Progress(update))) => {
                display.progress(update.job_id, &update.progress)
            }
            Some(Ok(StreamItem::Lagged { resume_after, .. })) => {
                return Ended::Lagged(resume_after)
            }
            Some(Ok(StreamItem::End {
                job_id,
                outcome,
                reason,
            })) => {
                return if job_id.is_some() || outcome.is_some() {
                    Ended::Done
                } else {
                    Ended::Dropped(anyhow::anyhow!("the daemon ended the stream: {reason}"))
                };
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Ended::Dropped(e.into()),
            None => return Ended::Dropped(anyhow::anyhow!("the daemon closed the stream")),
        }
    }
}

/// What `aura wait` knows of one job.
#[derive(Default)]
struct Waited {
    finished: Option<JobView>,
    running: bool,
    percent: Option<f64>,
}

/// `aura wait ID...`: waits until every job has finished, printing each one's outcome. Returns 0 when all
/// succeeded, else the exit code of the first (in the order given) that did not.
pub async fn wait_all(client: &Client, ids: &[JobId]) -> anyhow::Result<u8> {
    let mut order: Vec<JobId> = Vec::with_capacity(ids.len());
    for id in ids {
        if !order.contains(id) {
            order.push(*id);
        }
    }
    let total = u64::try_from(order.len()).unwrap_or(u64::MAX);
    let mut display = Display::new(String::new(), Some(total));
    let result = wait_streams(client, &order, &mut display).await;
    display.finish();
    let jobs = result?;
    let code = order
        .iter()
        .filter_map(|id| jobs.get(id)?.finished.as_ref())
        .find(|view| !view.job.outcome().is_some_and(Outcome::is_success))
        .map_or(0, exit_code);
    Ok(code)
}

async fn wait_streams(
    client: &Client,
    order: &[JobId],
    display: &mut Display,
) -> anyhow::Result<HashMap<JobId, Waited>> {
    let mut jobs: HashMap<JobId, Waited> =
        order.iter().map(|id| (*id, Waited::default())).collect();
    let mut after: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let mut stream = match client.all_stream(after.clone(), true).await {
            Ok(stream) => Some(stream),
            Err(e) if e.is_transient() && failures < MAX_RECONNECTS => {
                failures += 1;
                display.note(&format!("event stream unavailable ({e:#}); retrying"));
                None
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(stream) = stream.as_mut() {
            // Read after subscribing: a job that finished before is seen here, one that finishes after in
            // the stream (or both, harmlessly).
            for id in order {
                if jobs.get(id).is_some_and(|j| j.finished.is_none()) {
                    let view = client.get(*id).await?;
                    note_view(&mut jobs, display, view);
                }
            }
            if all_finished(&jobs) {
                return Ok(jobs);
            }
            let ended = read_all_stream(client, stream, &mut jobs, display, &mut failures).await?;
            after = stream.last_id().map(str::to_owned).or(after);
            if let Ended::Done = ended {
                return Ok(jobs);
            }
            ended.retry("the event stream", &mut after, &mut failures, display)?;
        }
        tokio::time::sleep(backoff(failures)).await;
    }
}

fn all_finished(jobs: &HashMap<JobId, Waited>) -> bool {
    jobs.values().all(|j| j.finished.is_some())
}

/// Notes a job's record: a finished one gets its outcome line, once.
fn note_view(jobs: &mut HashMap<JobId, Waited>, display: &mut Display, view: JobView) {
    let id = view.job.id;
    let Some(waited) = jobs.get_mut(&id) else {
        return;
    };
    if waited.finished.is_some() {
        return;
    }
    // A paused job has started and not ended: it counts with the running ones.
    waited.running = matches!(
        view.job.state,
        JobState::Running { .. } | JobState::Paused { .. } | JobState::Stopping { .. }
    );
    if view.job.outcome().is_some() {
        display.job_ended(id, final_progress(&view));
        display.line(&format!("job {id}: {}", describe_state(&view)));
        waited.finished = Some(view);
        waited.running = false;
    }
    show_aggregate(jobs, display);
}

fn show_aggregate(jobs: &HashMap<JobId, Waited>, display: &Display) {
    let done = jobs.values().filter(|j| j.finished.is_some()).count();
    let running: Vec<&Waited> = jobs.values().filter(|j| j.running).collect();
    let percents: Vec<f64> = running.iter().filter_map(|j| j.percent).collect();
    let mean = (!percents.is_empty()).then(|| percents.iter().sum::<f64>() / percents.len() as f64);
    display.aggregate(u64::try_from(done).unwrap_or(u64::MAX), running.len(), mean);
}

async fn read_all_stream(
    client: &Client,
    stream: &mut EventStream,
    jobs: &mut HashMap<JobId, Waited>,
    display: &mut Display,
    failures: &mut u32,
) -> anyhow::Result<Ended> {
    loop {
        match stream.next().await {
            Some(Ok(StreamItem::Job(event, _))) => {
                *failures = 0;
                let id = event.job_id;
                if !jobs.get(&id).is_some_and(|j| j.finished.is_none()) {
                    continue;
                }
                display.line(&event_line(&event));
                match &event.event {
                    JobEvent::Started { .. } => {
                        if let Some(j) = jobs.get_mut(&id) {
                            j.running = true;
                        }
                        show_aggregate(jobs, display);
                    }
                    // Whether it finished for good (no retry follows) only its record tells.
                    JobEvent::Finished { .. } => {
                        let view = client.get(id).await?;
                        note_view(jobs, display, view);
                        if all_finished(jobs) {
                            return Ok(Ended::Done);
                        }
                    }
                    _ => {}
                }
            }
            Some(Ok(StreamItem::Progress(update))) => {
                let id = update.job_id;
                let Some(j) = jobs.get_mut(&id).filter(|j| j.finished.is_none()) else {
                    continue;
                };
                j.percent = update.progress.percent;
                j.running = true;
                if display.bar.is_some() {
                    show_aggregate(jobs, display);
                } else {
                    display.progress(id, &update.progress);
                }
            }
            Some(Ok(StreamItem::Lagged { resume_after, .. })) => {
                return Ok(Ended::Lagged(resume_after))
            }
            Some(Ok(StreamItem::End { reason, .. })) => {
                return Ok(Ended::Dropped(anyhow::anyhow!(
                    "the daemon ended the stream: {reason}"
                )))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Ok(Ended::Dropped(e.into())),
            None => {
                return Ok(Ended::Dropped(anyhow::anyhow!(
                    "the daemon closed the stream"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(percent: f64) -> Progress {
        Progress {
            percent: Some(percent),
            ..Progress::default()
        }
    }

    #[test]
    fn plain_progress_is_one_line_a_second_but_the_end_always_shows() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        let job = JobId(1);
        assert!(throttle.admit(job, &at(10.0), start));
        assert!(!throttle.admit(job, &at(20.0), start + Duration::from_millis(400)));
        assert!(!throttle.admit(job, &at(30.0), start + Duration::from_millis(900)));
        // Another job has its own second.
        assert!(throttle.admit(JobId(2), &at(5.0), start + Duration::from_millis(900)));
        assert!(throttle.admit(job, &at(40.0), start + Duration::from_millis(1000)));
        assert!(!throttle.admit(job, &at(50.0), start + Duration::from_millis(1100)));
        // Done shows at once, once.
        assert!(throttle.admit(job, &at(100.0), start + Duration::from_millis(1200)));
        assert!(!throttle.admit(job, &at(100.0), start + Duration::from_millis(1300)));
        assert_eq!(throttle.take_held(job), Some(at(100.0)));
        assert_eq!(throttle.take_held(job), None);
        assert_eq!(throttle.shown(job), Some(&at(100.0)));
    }

    #[test]
    fn reconnections_back_off_and_are_bounded() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(40), Duration::from_secs(4));
    }
}
