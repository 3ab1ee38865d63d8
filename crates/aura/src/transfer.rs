//! `aura upload` and `aura fetch`: a file sent for jobs' inputs, a job's files listed or downloaded
//! (to `OUT.part`, renamed when complete, resumed with a range request when a `.part` is left), with a
//! byte progress bar on a terminal and a few plain lines otherwise.

use anyhow::{bail, Context};
use aura_client::Client;
use aura_model::files::{FileKind, FilesSource};
use aura_model::{ByteSize, JobId};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BYTES_BAR: &str =
    "{spinner:.green} {prefix} [{bar:25.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
/// How often a plain (not a terminal) progress line is printed at most.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Progress of one transfer: an indicatif bar on stderr when it is a terminal, else a line on stderr
/// every `PLAIN_EVERY` (stdout stays for what scripts read: the id, the file).
#[derive(Clone)]
struct Progress {
    bar: Option<ProgressBar>,
    plain: Option<std::sync::Arc<std::sync::Mutex<(Instant, String)>>>,
}

impl Progress {
    fn new(what: &str, total: Option<u64>, quiet: bool) -> Progress {
        if quiet {
            return Progress {
                bar: None,
                plain: None,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total.unwrap_or(0));
            // The template is a constant: a bad one costs the bar its looks, not the command.
            let style = ProgressStyle::with_template(BYTES_BAR)
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            return Progress {
                bar: Some(bar),
                plain: None,
            };
        }
        Progress {
            bar: None,
            plain: Some(std::sync::Arc::new(std::sync::Mutex::new((
                Instant::now(),
                what.to_owned(),
            )))),
        }
    }

    fn set(&self, done: u64, total: Option<u64>) {
        if let Some(bar) = &self.bar {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(done);
        }
        if let Some(plain) = &self.plain {
            let mut last = plain.lock().unwrap_or_else(|e| e.into_inner());
            if last.0.elapsed() >= PLAIN_EVERY {
                last.0 = Instant::now();
                let of = total.map_or(String::new(), |t| format!(" of {}", ByteSize(t)));
                eprintln!("{}: {}{of}", last.1, ByteSize(done));
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `aura upload FILE [--quiet]`: prints what was stored, and the upload id as the last line.
pub async fn upload(client: &Client, file: &Path, quiet: bool) -> anyhow::Result<u8> {
    let name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let size = tokio::fs::metadata(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let progress = Progress::new(&name, Some(size), quiet);
    let shown = progress.clone();
    let result = client
        .upload(file, move |sent, total| shown.set(sent, Some(total)))
        .await;
    progress.finish();
    let info = result?;
    if !quiet {
        let how = if info.existing {
            "already there"
        } else {
            "stored"
        };
        println!("{name}: {} {how} (sha256)", ByteSize(info.size));
    }
    println!("{}", info.id);
    Ok(0)
}

/// `aura fetch ID [--json]`: the job's files as a table.
pub async fn list(client: &Client, id: JobId, json: bool) -> anyhow::Result<u8> {
    let files = client.job_files(id).await?;
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &files)?;
        writeln!(out)?;
        return Ok(0);
    }
    println!("{:<8}  {:>10}  {:<19}  PATH", "KIND", "SIZE", "MODIFIED");
    for file in &files.files {
        let kind = match file.kind {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        };
        let size = if file.kind == FileKind::File {
            ByteSize(file.size).to_string()
        } else {
            "-".into()
        };
        let modified: String = file
            .modified
            .to_string()
            .replace('T', " ")
            .chars()
            .take(19)
            .collect();
        println!("{kind:<8}  {size:>10}  {modified:<19}  {}", file.path);
    }
    if files.source == FilesSource::Archive {
        println!("(from the archive of the job's directory)");
    }
    if files.truncated {
        println!("(more files than listed)");
    }
    Ok(0)
}

/// Where `aura fetch ID PATH` writes by default: the file's own name, in the current directory.
fn default_output(path: &str) -> anyhow::Result<PathBuf> {
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => Ok(PathBuf::from(name)),
        _ => bail!("{path:?} names no file: give one, or -o OUT"),
    }
}

/// `OUT.part`, where a download is written until it is complete.
fn part_of(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// `aura fetch ID PATH [-o OUT]`: downloads one file (`-o -`: to stdout).
pub async fn fetch(
    client: &Client,
    id: JobId,
    path: &str,
    output: Option<&Path>,
) -> anyhow::Result<u8> {
    let out = match output {
        Some(out) => out.to_path_buf(),
        None => default_output(path)?,
    };
    if out == Path::new("-") {
        return to_stdout(client, id, path).await;
    }
    use tokio::io::AsyncWriteExt;
    let part = part_of(&out);
    let have = match tokio::fs::metadata(&part).await {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => 0,
    };
    let mut download = client.download(id, path, have).await?;
    let resumed = download.start > 0;
    let mut file = if resumed {
        tokio::fs::OpenOptions::new().append(true).open(&part).await
    } else {
        // Nothing to resume from, or the daemon sent the whole file after all: start over.
        tokio::fs::File::create(&part).await
    }
    .with_context(|| format!("cannot write {}", part.display()))?;
    let progress = Progress::new(path, download.total, false);
    let mut done = download.start;
    while let Some(piece) = download.chunk().await? {
        file.write_all(&piece)
            .await
            .with_context(|| format!("cannot write {}", part.display()))?;
        done += piece.len() as u64;
        progress.set(done, download.total);
    }
    progress.finish();
    if let Some(total) = download.total.filter(|&t| t != done) {
        bail!(
            "the download of {path} stopped at {done} of {total} bytes; run the command again to resume it"
        );
    }
    file.sync_all()
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    drop(file);
    tokio::fs::rename(&part, &out)
        .await
        .with_context(|| format!("cannot rename {} to {}", part.display(), out.display()))?;
    let how = if resumed {
        format!(" (resumed at {})", ByteSize(download.start))
    } else {
        String::new()
    };
    println!("{}: {}{how}", out.display(), ByteSize(done));
    Ok(0)
}

/// `aura fetch ID PATH -o -`: the file's bytes on stdout, nothing else there.
async fn to_stdout(client: &Client, id: JobId, path: &str) -> anyhow::Result<u8> {
    let mut download = client.download(id, path, 0).await?;
    // The CLI's own thread: a blocking write to a pipe holds up nothing else.
    let mut done = 0;
    while let Some(piece) = download.chunk().await? {
        std::io::stdout().write_all(&piece)?;
        done += piece.len() as u64;
    }
    std::io::stdout().flush()?;
    if let Some(total) = download.total.filter(|&t| t != done) {
        bail!("the download of {path} stopped at {done} of {total} bytes");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_is_named_after_its_file() {
        assert_eq!(default_output("sub/out.mp4").unwrap(), Path::new("out.mp4"));
        assert_eq!(default_output("x").unwrap(), Path::new("x"));
        assert!(default_output("sub/").is_err());
        assert_eq!(part_of(Path::new("a/b.mp4")), Path::new("a/b.mp4.part"));
    }
}
