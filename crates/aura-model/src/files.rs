//! Files in and out over the API: uploads (content-addressed inputs a job spec names) and the listing of
//! a job's working directory (its outputs), as the server writes them and the client reads them.

use crate::Timestamp;
use serde::{Deserialize, Serialize};

/// An upload's id: the lowercase hex SHA-256 of its content (64 characters). The same bytes uploaded
/// twice are one upload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-f]{64}$"))]
pub struct UploadId(String);

impl UploadId {
    /// The id of content whose SHA-256 digest is `digest`.
    pub fn from_digest(digest: &[u8; 32]) -> UploadId {
        use std::fmt::Write;
        let mut hex = String::with_capacity(64);
        for b in digest {
            let _ = write!(hex, "{b:02x}");
        }
        UploadId(hex)
    }

    /// The id as text (also the upload's file name under `uploads/`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a text is not an upload id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an upload id (64 lowercase hex digits, the SHA-256 of its content): {0:?}")]
pub struct BadUploadId(pub String);

impl TryFrom<String> for UploadId {
    type Error = BadUploadId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(UploadId(s))
        } else {
            Err(BadUploadId(s.chars().take(80).collect()))
        }
    }
}

impl std::str::FromStr for UploadId {
    type Err = BadUploadId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UploadId::try_from(s.to_owned())
    }
}

impl From<UploadId> for String {
    fn from(id: UploadId) -> String {
        id.0
    }
}

/// What `POST /api/uploads` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadInfo {
    /// Name it in a job spec's `inputs`.
    pub id: UploadId,
    /// Bytes.
    pub size: u64,
    /// When it was stored (or, for content uploaded before, when it was last uploaded again).
    pub stored_at: Timestamp,
    /// The same content was already there: nothing new was written.
    #[serde(default)]
    pub existing: bool,
}

/// What an entry of a job's directory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file: downloadable.
    File,
    /// A directory (listed, its entries follow it).
    Dir,
    /// A symbolic link: listed, never followed, never served.
    Symlink,
    /// Anything else (a FIFO, a socket): listed only.
    Other,
}

/// One entry of a job's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileEntry {
    /// Relative to the job's directory, `/`-separated.
    pub path: String,
    /// What it is.
    pub kind: FileKind,
    /// Bytes (0 for a directory).
    pub size: u64,
    /// Its modification time.
    pub modified: Timestamp,
}

/// Where a job's files are served from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FilesSource {
    /// Its working directory, `work/<id>/` in the data dir.
    Work,
    /// The janitor archived it: `archive/work/<id>.tar.zst` (downloads decompress on the fly).
    Archive,
}

/// What `GET /api/jobs/{id}/files` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobFiles {
    /// The job.
    pub job: crate::JobId,
    /// Where the files are.
    pub source: FilesSource,
    /// Depth first, names in byte order; at most `MAX_LISTED_FILES`.
    pub files: Vec<FileEntry>,
    /// More entries exist than were listed.
    #[serde(default)]
    pub truncated: bool,
}

/// The most entries one listing of a job's files carries.
pub const MAX_LISTED_FILES: usize = 10_000;

/// The file name an input is materialised under in a job's directory: one plain component (no `/`, not
/// `.` or `..`, no NUL, no leading `-` so that it cannot read as an option), at most 255 bytes.
pub fn check_input_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!("input name {name:?} must be 1 to 255 bytes"));
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!(
            "input name {name:?} must be a plain file name (no '/', not '.' or '..')"
        ));
    }
    if name.starts_with('-') {
        return Err(format!("input name {name:?} must not start with '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_are_exactly_sha256_hex() {
        let id = UploadId::from_digest(&[0xab; 32]);
        assert_eq!(id.as_str(), "ab".repeat(32));
        assert_eq!(id.as_str().parse::<UploadId>().unwrap(), id);
        for bad in [
            "",
            "AB",
            &"A".repeat(64),
            &"g".repeat(64),
            &"a".repeat(63),
            "../etc/passwd",
        ] {
            assert!(bad.parse::<UploadId>().is_err(), "{bad}");
        }
        let json: Result<UploadId, _> = serde_json::from_str("\"../../x\"");
        assert!(json.is_err());
    }

    #[test]
    fn input_names_are_one_plain_component() {
        for ok in ["in.mp4", "a b.wav", ".hidden", "ü.mov"] {
            assert_eq!(check_input_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/abs", "-i", "x\0y", &"a".repeat(256)] {
            assert!(check_input_name(bad).is_err(), "{bad:?}");
        }
    }
}
