//! A secret value (a provider key, an API token) held in memory: it cannot be printed, logged or
//! serialised by accident — `Debug` and `Display` show `[redacted]`, and there is no `Serialize`.

/// A value that must never appear in logs, `Debug` output, the database or the API. Read it with
/// [`Secret::expose`], only where it is used (a job's environment, a comparison).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value as soon as it is read (from the secrets file or the environment).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The plain value; call this only at the point of use, never to log or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::view::REDACTED)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::view::REDACTED)
    }
}

impl Drop for Secret {
    /// Overwrites the bytes before the allocation is freed, so a later heap dump or reuse does not find
    /// the value.
    fn drop(&mut self) {
        // SAFETY: only zero bytes are written, which are valid UTF-8, so the string stays valid.
        let bytes = unsafe { self.0.as_bytes_mut() };
        for b in bytes {
            // SAFETY: `b` is a valid, exclusive reference into the string; a volatile write is not
            // optimised away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("sk-abc123");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(format!("{:?}", Some(vec![s.clone()])), "Some([[redacted]])");
        assert_eq!(s.expose(), "sk-abc123");
    }
}
