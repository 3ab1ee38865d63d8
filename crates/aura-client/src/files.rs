//! Files in and out: an upload streamed from a local file (`POST /api/uploads`), a job's listing, and a
//! download read piece by piece, resumable from an offset (`GET /api/jobs/{id}/files/{path}`).

use crate::{Client, ClientError};
use aura_model::files::{JobFiles, UploadInfo};
use aura_model::JobId;
use reqwest::StatusCode;
use std::path::Path;

/// Bytes read from the file per piece of an upload.
const UPLOAD_PIECE: usize = 256 << 10;

/// A download under way: where its bytes start, how many the file has, and its body.
pub struct Download {
    /// The offset of the first byte the body carries: the one asked for, or 0 when the daemon sent the
    /// whole file (it ignored the range, or the file changed) — the caller then starts over.
    pub start: u64,
    /// The file's size, where the daemon said it.
    pub total: Option<u64>,
    /// `None` when there is nothing to read: the range asked for starts at the file's end.
    response: Option<reqwest::Response>,
    url: String,
}

impl Download {
    /// The next piece of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        let Some(response) = self.response.as_mut() else {
            return Ok(None);
        };
        response.chunk().await.map_err(|source| ClientError::Http {
            url: self.url.clone(),
            source,
        })
    }
}

/// A job file's path as a URL path: each segment percent-encoded, `/` kept.
fn encoded(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `Content-Range` header's size: `bytes A-B/SIZE` or `bytes */SIZE`.
fn range_total(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .rsplit_once('/')?
        .1
        .trim()
        .parse()
        .ok()
}

/// A response's `Content-Length` header (reqwest's own figure is the body's, empty for `HEAD`).
fn length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl Client {
    /// `POST /api/uploads`: sends the file at `path` as it reads it, calling `progress(sent, size)`
    /// after each piece; answers its upload id (the SHA-256 of its content) and whether the daemon had
    /// it already.
    pub async fn upload(
        &self,
        path: &Path,
        mut progress: impl FnMut(u64, u64) + Send + Sync + 'static,
    ) -> Result<UploadInfo, ClientError> {
        let failed = |source| ClientError::File {
            path: path.to_path_buf(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(failed)?;
        let size = file.metadata().await.map_err(failed)?.len();
        let pieces = futures_util::stream::unfold((file, 0u64), move |(mut file, sent)| {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0; UPLOAD_PIECE];
            let piece = async move {
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(buf), (file, sent + n as u64)))
                    }
                    Err(e) => Some((Err(e), (file, sent))),
                }
            };
            piece
        });
        // Progress as pieces leave (the daemon has them once the answer comes).
        let counted = {
            use futures_util::StreamExt;
            let mut sent = 0u64;
            pieces.map(move |piece: std::io::Result<Vec<u8>>| {
                if let Ok(bytes) = &piece {
                    sent += bytes.len() as u64;
                    progress(sent, size);
                }
                piece
            })
        };
        // The size up front: the daemon refuses an upload over its cap, or without room, before it is
        // sent.
        let request = self
            .http
            .post(self.url("/api/uploads"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(counted));
        self.send(request).await
    }

    /// `GET /api/jobs/{id}/files`: the job's files, from its directory or its archive.
    pub async fn job_files(&self, id: JobId) -> Result<JobFiles, ClientError> {
        self.send(self.http.get(self.url(&format!("/api/jobs/{id}/files"))))
            .await
    }

    /// `GET /api/jobs/{id}/files/{path}` from byte `from` (0: the whole file): a `Range` request when
    /// `from` is above 0. Read the body with [`Download::chunk`]; check [`Download::start`], which is 0
    /// when the daemon sent the whole file instead.
    pub async fn download(
        &self,
        id: JobId,
        path: &str,
        from: u64,
    ) -> Result<Download, ClientError> {
        let url = self.url(&format!("/api/jobs/{id}/files/{}", encoded(path)));
        // The streams' client: no overall timeout, but a read timeout, so a dead connection is noticed.
        let mut request = self.streams.get(&url);
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let response = match self.execute(request).await {
            Ok(response) => response,
            // Nothing from `from` on: done if the file ends there, else (it shrank) the whole file.
            Err(ClientError::Api(p)) if p.status == 416 && from > 0 => {
                let size = length(&self.execute(self.streams.head(&url)).await?);
                if size == Some(from) {
                    return Ok(Download {
                        start: from,
                        total: size,
                        response: None,
                        url,
                    });
                }
                return Box::pin(self.download(id, path, 0)).await;
            }
            Err(e) => return Err(e),
        };
        let (start, total) = if response.status() == StatusCode::PARTIAL_CONTENT {
            (from, range_total(&response))
        } else {
            (0, length(&response))
        };
        Ok(Download {
            start,
            total,
            response: Some(response),
            url,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_encoded_segment_by_segment() {
        assert_eq!(super::encoded("sub/out.mp4"), "sub/out.mp4");
        assert_eq!(super::encoded("a b/ü?#%"), "a%20b/%C3%BC%3F%23%25");
    }
}
