//! Files in and out over the API, against a live daemon: uploads under their SHA-256 (CLI and HTTP),
//! over the cap and on a full volume with no partial file left; a job's output downloaded
//! byte-identical through the API (ranges) and `aura fetch` (resumed); symlinks and traversal refused;
//! scopes; an archived job directory served from its `.tar.zst`.

use super::security::{answer, config_file, token_config, with_token};
use super::*;
use sha2::Digest;

/// `len` bytes no compressor shrinks (xorshift), the same for the same seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(data))
}

/// Names in the data dir's `uploads/` that are partial uploads.
fn partials(daemon: &Daemon) -> Vec<String> {
    std::fs::read_dir(daemon.data_dir.join("uploads"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".partial-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (briefly) until no partial upload is left: a refused upload removes its file as its handler
/// ends, which may be just after the client saw the answer.
async fn no_partials_left(daemon: &Daemon) {
    for _ in 0..100 {
        if partials(daemon).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("partial uploads left: {:?}", partials(daemon));
}

/// `POST /api/uploads` of `body` without a `Content-Length` (chunked): the daemon learns the size only
/// as it comes. The status, or 0 when the connection broke before an answer (a refusal mid-body may
/// close it while the client still sends).
async fn upload_chunked(http: &reqwest::Client, daemon: &Daemon, body: Vec<u8>) -> u16 {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(256 << 10).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::stream::iter(pieces);
    http.post(format!("{}/api/uploads", daemon.url))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// A raw `GET` (reqwest would normalise `..` and `%2e%2e` away); the status code.
fn raw_get(daemon: &Daemon, target: &str) -> u16 {
    use std::io::{Read, Write};
    let address = daemon.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        daemon.token
    )
    .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Uploads through the CLI and the API: the id is the content's SHA-256, the same content is stored once,
/// the cap is a 413 (declared or found on the way) and nothing partial is left; a read token may not
/// upload, no token is a 401; an input naming an unknown upload is refused at submit.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_content_addressed_capped_and_scoped() {
    let (read_token, read_cfg) = token_config("viewer", "read", "");
    let (_dir, config) = config_file(&read_cfg);
    let daemon = Daemon::start(&[("AURA_CONFIG", &config), ("AURA_UPLOADS__MAX_SIZE", "6M")]);
    let data = noise(5 << 20, 1);
    let file = daemon.scratch().join("in.bin");
    std::fs::write(&file, &data).expect("write");
    let path = file.to_str().expect("utf-8");

    let out = daemon.cli(&["upload", path]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(
        text.lines().last(),
        Some(sha256_hex(&data).as_str()),
        "{text}"
    );
    assert!(text.contains("stored"), "{text}");
    let out = daemon.cli(&["upload", "--quiet", path]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("{}\n", sha256_hex(&data)));
    let stored = daemon.data_dir.join("uploads").join(sha256_hex(&data));
    assert_eq!(std::fs::read(&stored).expect("stored upload"), data);
    let again = daemon
        .client()
        .upload(&file, |_, _| {})
        .await
        .expect("upload");
    assert!(again.existing);

    // Over the cap: refused on its Content-Length, and on the way without one.
    let big = daemon.scratch().join("big.bin");
    std::fs::write(&big, noise(7 << 20, 2)).expect("write");
    let out = daemon.cli(&["upload", big.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("larger than"),
        "{out:?}"
    );
    let status = upload_chunked(&authed(&daemon.url), &daemon, noise(7 << 20, 3)).await;
    assert!(matches!(status, 413 | 0), "{status}");
    no_partials_left(&daemon).await;

    // A client that goes away half-way leaves nothing behind either.
    {
        use std::io::Write;
        let address = daemon.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        write!(
            stream,
            "POST /api/uploads HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 5000000\r\n\r\n",
            daemon.token
        )
        .expect("send");
        stream.write_all(&noise(2 << 20, 9)).expect("send");
        for _ in 0..250 {
            if !partials(&daemon).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!partials(&daemon).is_empty(), "the upload never began");
    }
    no_partials_left(&daemon).await;

    // Scopes: a read token may not upload, nobody without a token.
    let reader = with_token(&read_token);
    let refused = reader
        .post(format!("{}/api/uploads", daemon.url))
        .body("x")
        .send()
        .await
        .expect("answer");
    assert_eq!(answer(refused).await, (403, "insufficient_scope".into()));
    let anonymous = reqwest::Client::new()
        .post(format!("{}/api/uploads", daemon.url))
        .body("x")
        .send()
        .await
        .expect("answer");
    assert_eq!(anonymous.status().as_u16(), 401);

    // Inputs: an upload the daemon has, or a 422.
    let out = daemon.cli(&[
        "submit",
        "--input",
        &format!("in.bin={}", "0".repeat(64)),
        "--",
        "true",
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no upload"),
        "{out:?}"
    );
    let input = format!("in.bin={}", sha256_hex(&data));
    let out = daemon.cli(&["submit", "--quiet", "--input", &input, "--", "true"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(uploads_named(&daemon), [sha256_hex(&data)]);
}

/// The uploads stored (not partial ones).
fn uploads_named(daemon: &Daemon) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(daemon.data_dir.join("uploads"))
        .expect("uploads/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// An 8 MiB volume as `uploads/`: an upload that declares more than fits is a 507 before its body, one
/// that fills the volume on the way is a 507 too; neither leaves a partial file, and a small one still
/// fits.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_volume_refuses_uploads_with_507_and_keeps_nothing() {
    let Some(volume) = super::faults::Tmpfs::mount("size=8m") else {
        return;
    };
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = root.path().join("data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    // The volume where the daemon keeps uploads.
    std::fs::create_dir(data_dir.join("uploads")).expect("mkdir uploads");
    let bound = Command::new("mount")
        .args(["--bind"])
        .arg(&volume.path)
        .arg(data_dir.join("uploads"))
        .status()
        .is_ok_and(|s| s.success());
    if !bound {
        eprintln!("skipped: cannot bind-mount here");
        return;
    }
    let _unbind = Unmount(data_dir.join("uploads"));
    let daemon = Daemon::start_at(data_dir, &[("AURA_UPLOADS__MIN_FREE", "0")]);
    let client = daemon.client();

    let file = daemon.scratch().join("ten.bin");
    std::fs::write(&file, noise(10 << 20, 4)).expect("write");
    match client.upload(&file, |_, _| {}).await {
        Err(aura_client::ClientError::Api(p)) => {
            assert_eq!(
                (p.status, p.code.as_str()),
                (507, "insufficient_storage"),
                "{p:?}"
            )
        }
        other => panic!("a 10 MiB upload into 8 MiB: {other:?}"),
    }
    let status = upload_chunked(&authed(&daemon.url), &daemon, noise(10 << 20, 5)).await;
    assert!(matches!(status, 507 | 0), "{status}");
    no_partials_left(&daemon).await;
    let small = daemon.scratch().join("small.bin");
    std::fs::write(&small, noise(1 << 20, 6)).expect("write");
    let info = client
        .upload(&small, |_, _| {})
        .await
        .expect("a small upload fits");
    assert!(!info.existing);
    drop(daemon);
}

/// Unmounts a path on drop (lazily: a daemon's open files must not keep it).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A job's output: listed (symlinks as such), downloaded byte-identical through the API whole and by
/// range and through `aura fetch` (also resumed from a `.part`), symlinks and traversal refused, read
/// scope enough; then archived (`archive/work/<id>.tar.zst`, its directory gone) and served from there.
#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_files_download_byte_identical_from_its_directory_and_its_archive() {
    let (read_token, read_cfg) = token_config("viewer", "read", "");
    let (_dir, config) = config_file(&read_cfg);
    let daemon = Daemon::start(&[("AURA_CONFIG", &config)]);
    let client = daemon.client();
    let script = "head -c 3000000 /dev/urandom > out.bin && mkdir sub && echo hello > sub/x.txt \
                  && ln -s /etc/passwd passwd && ln -s /etc etc";
    let id = submit(&client, &spec("sh", &["-c", script])).await;
    let view = wait_done(&client, id).await;
    assert_eq!(outcome(&view), &Outcome::Succeeded, "{view:?}");
    let work = daemon.data_dir.join("work").join(id.to_string());
    let data = std::fs::read(work.join("out.bin")).expect("the job's output");
    assert_eq!(data.len(), 3_000_000);

    let reader = Client::authorized(&daemon.url, &read_token).expect("client");
    let files = reader.job_files(id).await.expect("listing");
    let kinds: Vec<(&str, aura_model::files::FileKind)> = files
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.kind))
        .collect();
    use aura_model::files::FileKind::{Dir, File, Symlink};
    assert_eq!(
        kinds,
        [
            ("etc", Symlink),
            ("out.bin", File),
            ("passwd", Symlink),
            ("sub", Dir),
            ("sub/x.txt", File)
        ]
    );
    let listing = stdout(&daemon.cli(&["fetch", &id.to_string()]));
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("symlink") && l.ends_with("passwd")),
        "{listing}"
    );

    let http = with_token(&read_token);
    let url = format!("{}/api/jobs/{id}/files/out.bin", daemon.url);
    let get = |range: Option<&'static str>| {
        let request = http.get(&url);
        let request = match range {
            Some(range) => request.header("range", range),
            None => request,
        };
        async move {
            let response = request.send().await.expect("answer");
            let status = response.status().as_u16();
            let content_range = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (
                status,
                content_range,
                response.bytes().await.expect("body").to_vec(),
            )
        }
    };
    assert_eq!(get(None).await, (200, String::new(), data.clone()));
    assert_eq!(
        get(Some("bytes=100-199")).await,
        (206, "bytes 100-199/3000000".into(), data[100..200].to_vec())
    );
    assert_eq!(
        get(Some("bytes=-10")).await,
        (
            206,
            "bytes 2999990-2999999/3000000".into(),
            data[2_999_990..].to_vec()
        )
    );
    assert_eq!(
        get(Some("bytes=5-")).await,
        (206, "bytes 5-2999999/3000000".into(), data[5..].to_vec())
    );
    let (status, content_range, _) = get(Some("bytes=3000000-")).await;
    assert_eq!((status, content_range.as_str()), (416, "bytes */3000000"));

    // Through the CLI: whole, then resumed from a partial download.
    let out_path = daemon.scratch().join("fetched.bin");
    let out = out_path.to_str().expect("utf-8");
    let fetched = daemon.cli(&["fetch", &id.to_string(), "out.bin", "-o", out]);
    assert!(fetched.status.success(), "{fetched:?}");
    assert_eq!(std::fs::read(&out_path).expect("fetched"), data);
    std::fs::remove_file(&out_path).expect("rm");
    std::fs::write(format!("{out}.part"), &data[..1_000_000]).expect("a partial download");
    let fetched = daemon.cli(&["fetch", &id.to_string(), "out.bin", "-o", out]);
    assert!(fetched.status.success(), "{fetched:?}");
    assert!(stdout(&fetched).contains("resumed"), "{fetched:?}");
    assert_eq!(std::fs::read(&out_path).expect("fetched"), data);
    assert!(!Path::new(&format!("{out}.part")).exists());
    let piped = daemon.cli(&["fetch", &id.to_string(), "sub/x.txt", "-o", "-"]);
    assert_eq!(piped.stdout, b"hello\n", "{piped:?}");

    // Never through a symlink, never out of the directory.
    for path in ["passwd", "etc/passwd"] {
        let response = http
            .get(format!("{}/api/jobs/{id}/files/{path}", daemon.url))
            .send()
            .await
            .expect("answer");
        assert_eq!(
            answer(response).await,
            (403, "forbidden_path".into()),
            "{path}"
        );
    }
    for target in [
        format!("/api/jobs/{id}/files/../../aura.db"),
        format!("/api/jobs/{id}/files/%2e%2e/%2e%2e/aura.db"),
        format!("/api/jobs/{id}/files/sub/..%2f..%2f..%2faura.db"),
    ] {
        assert_eq!(raw_get(&daemon, &target), 403, "{target}");
    }
    let anonymous = reqwest::get(&url).await.expect("answer");
    assert_eq!(anonymous.status().as_u16(), 401);

    // Archived: the directory gone, its .tar.zst (as the janitor leaves it) served instead.
    let archive_dir = daemon.data_dir.join("archive").join("work");
    std::fs::create_dir_all(&archive_dir).expect("archive dir");
    let archive = archive_dir.join(format!("{id}.tar.zst"));
    let tarred = Command::new("tar")
        .arg("--zstd")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&work)
        .arg(".")
        .status()
        .expect("tar");
    assert!(tarred.success(), "tar --zstd (is zstd installed?)");
    std::fs::remove_dir_all(&work).expect("rm work dir");
    let files = reader.job_files(id).await.expect("listing");
    assert_eq!(files.source, aura_model::files::FilesSource::Archive);
    assert!(files
        .files
        .iter()
        .any(|f| f.path == "out.bin" && f.size == 3_000_000));
    assert_eq!(get(None).await, (200, String::new(), data.clone()));
    assert_eq!(
        get(Some("bytes=100-199")).await,
        (206, "bytes 100-199/3000000".into(), data[100..200].to_vec())
    );
    let fetched = daemon.cli(&["fetch", &id.to_string(), "out.bin", "-o", out]);
    assert!(fetched.status.success(), "{fetched:?}");
    assert_eq!(std::fs::read(&out_path).expect("fetched"), data);
    let response = http
        .get(format!("{}/api/jobs/{id}/files/etc/passwd", daemon.url))
        .send()
        .await
        .expect("answer");
    assert_eq!(answer(response).await, (403, "forbidden_path".into()));
}
