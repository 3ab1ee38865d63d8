//! API tokens: how they are made, stored (only a SHA-256 hash; a token is 256 random bits, so a fast
//! hash is as strong as a slow one), presented (`Authorization: Bearer …`) and checked (every stored
//! hash compared in constant time), and what each may do (its scope).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do. Each scope includes the ones before it: `submit` reads too, `admin` does
/// everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum Scope {
    /// Jobs, their logs and events, metrics, status.
    Read,
    /// Submit jobs, cancel (and later retry) its own.
    Submit,
    /// Everyone's jobs, leases, diagnostics clean-up, configuration.
    Admin,
}

impl Scope {
    /// The scope's name as configuration and messages write it: `read`, `submit` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "submit" => Ok(Scope::Submit),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?} (use read, submit or admin)"
            )),
        }
    }
}

/// The stored form of a token: `sha256:` and 64 hex digits.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token`, as it is stored and compared.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
}

impl TryFrom<String> for TokenHash {
    type Error = String;
    fn try_from(text: String) -> Result<TokenHash, String> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| {
            "a token hash is \"sha256:\" and 64 hex digits (`aura token create` prints one)"
                .to_owned()
        })?;
        let bytes = decode_hex(hex).ok_or_else(|| "a token hash needs 64 hex digits".to_owned())?;
        Ok(TokenHash(bytes))
    }
}

impl From<TokenHash> for String {
    fn from(h: TokenHash) -> String {
        format!("sha256:{}", encode_hex(&h.0))
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash of a random token reveals nothing, but there is no need to print it either.
        f.write_str("sha256:…")
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// What a token looks like: a prefix that says what it is (secret scanners know such prefixes), and 256
/// random bits in hex.
pub const TOKEN_PREFIX: &str = "aura_";

/// A new random token from the operating system's generator.
pub fn generate_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(format!("{TOKEN_PREFIX}{}", encode_hex(&bytes)))
}

/// One configured token: a name (what logs and job records show), its hash, its scopes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token's name, recorded as the submitter of its jobs: 1 to 64 letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// The token's SHA-256 hash; the token itself is never stored.
    pub hash: TokenHash,
    /// The highest listed applies (each scope includes the lower ones).
    pub scopes: Vec<Scope>,
    /// Most jobs of this token waiting in the queue at once; more are answered 429. Default: no cap of
    /// its own (the global `admission.queue_cap` holds).
    #[serde(default)]
    pub max_queued: Option<usize>,
}

/// Who made a request, once its token matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    /// The highest scope the token has.
    pub scope: Scope,
    /// The token's own cap on its waiting jobs; `None`: only the global cap.
    pub max_queued: Option<usize>,
}

impl Principal {
    /// Whether this caller may do what needs the scope `needed`.
    pub fn allows(&self, needed: Scope) -> bool {
        self.scope >= needed
    }
}

/// Why a token set cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// A token lists no scopes; holds its name.
    #[error("api.tokens: token {0:?} has no scopes")]
    NoScopes(String),
    /// Two tokens have the same name; holds the name.
    #[error("api.tokens: the name {0:?} is used twice")]
    DuplicateName(String),
    /// A token's name is empty, over 64 bytes, or has characters other than letters, digits, `_`, `-`,
    /// `.`; holds the name.
    #[error("api.tokens: invalid name {0:?} (1 to 64 letters, digits, _ - .)")]
    InvalidName(String),
    /// Two tokens have the same hash, so they are the same token; holds both names.
    #[error("api.tokens: tokens {0:?} and {1:?} have the same hash")]
    DuplicateHash(String, String),
}

/// Accepted tokens: each hash with the principal it authenticates.
type Entries = Vec<(TokenHash, std::sync::Arc<Principal>)>;

/// The tokens a daemon accepts: its own, and in fleet mode the ones the other nodes published (shared by
/// every clone, replaced as a whole by `set_fleet`).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    // Shared principals: a request carries its caller by reference count, not by a copy of the name.
    entries: Entries,
    fleet: std::sync::Arc<std::sync::RwLock<Entries>>,
}

impl Tokens {
    /// The configured tokens (`api.tokens`), each with the highest scope it lists.
    pub fn new(configured: &[TokenConfig]) -> Result<Tokens, TokenError> {
        let mut tokens = Tokens::default();
        for t in configured {
            let scope = t
                .scopes
                .iter()
                .copied()
                .max()
                .ok_or_else(|| TokenError::NoScopes(t.name.clone()))?;
            tokens.add(
                t.hash.clone(),
                Principal {
                    name: t.name.clone(),
                    scope,
                    max_queued: t.max_queued,
                },
            )?;
        }
        Ok(tokens)
    }

    /// Adds a token (the local admin token of `aura serve`, say).
    pub fn add(&mut self, hash: TokenHash, principal: Principal) -> Result<(), TokenError> {
        let name = &principal.name;
        if !valid_token_name(name) {
            return Err(TokenError::InvalidName(name.clone()));
        }
        if let Some((_, other)) = self.entries.iter().find(|(_, p)| p.name == *name) {
            return Err(TokenError::DuplicateName(other.name.clone()));
        }
        if let Some((_, other)) = self.entries.iter().find(|(h, _)| *h == hash) {
            return Err(TokenError::DuplicateHash(other.name.clone(), name.clone()));
        }
        self.entries.push((hash, std::sync::Arc::new(principal)));
        Ok(())
    }

    /// Whether no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The principal whose token this is. Every stored hash is compared, in constant time, whatever
    /// matched: neither the time taken nor the order of the list tells an attacker anything. Its own
    /// tokens win over the fleet's.
    pub fn authenticate(&self, token: &str) -> Option<std::sync::Arc<Principal>> {
        let presented = TokenHash::of(token);
        let mut found = None;
        let fleet = self.fleet.read().unwrap_or_else(|p| p.into_inner());
        for (hash, principal) in fleet.iter().chain(&self.entries) {
            if bool::from(hash.0.ct_eq(&presented.0)) {
                found = Some(principal.clone());
            }
        }
        found
    }

    /// This daemon's own tokens as the fleet shares them: name, hash, scope (never a token).
    pub fn own(&self) -> Vec<(String, TokenHash, Scope)> {
        self.entries
            .iter()
            .map(|(hash, p)| (p.name.clone(), hash.clone(), p.scope))
            .collect()
    }

    /// Replaces the tokens the other nodes of the fleet published: `(node, name, hash, scope)`, each
    /// accepted under `name@node` (no queue cap of its own). A hash this daemon has already is
    /// skipped (its own entry decides), as is an entry whose hash or scope does not parse.
    pub fn set_fleet(&self, published: &[(String, String, String, String)]) {
        let mut entries = Vec::with_capacity(published.len());
        for (node, name, hash, scope) in published {
            let (Ok(hash), Ok(scope)) = (TokenHash::try_from(hash.clone()), scope.parse::<Scope>())
            else {
                continue;
            };
            if self.entries.iter().any(|(own, _)| *own == hash) {
                continue;
            }
            let principal = Principal {
                name: format!("{name}@{node}"),
                scope,
                max_queued: None,
            };
            entries.push((hash, std::sync::Arc::new(principal)));
        }
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = entries;
    }
}

/// A token's name: 1 to 64 letters, digits, `_`, `-`, `.`.
pub fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A caller's name as a principal carries it: a token name, or `name@node` for a token another node of
/// the fleet published (see `Tokens::set_fleet`), both parts token names.
pub fn valid_caller_name(name: &str) -> bool {
    match name.split_once('@') {
        Some((token, node)) => valid_token_name(token) && valid_token_name(node),
        None => valid_token_name(name),
    }
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme is case-insensitive, as
/// RFC 9110 says). `None` for any other form.
pub fn bearer(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, token: &str, scopes: &[Scope]) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            hash: TokenHash::of(token),
            scopes: scopes.to_vec(),
            max_queued: None,
        }
    }

    #[test]
    fn the_fleets_tokens_are_accepted_under_their_node_and_replaced_as_a_whole() {
        let own = generate_token().unwrap();
        let theirs = generate_token().unwrap();
        let tokens = Tokens::new(&[config("ci", &own, &[Scope::Submit])]).unwrap();
        let published = |token: &str, scope: &str| {
            (
                "node-b".to_owned(),
                "local-admin".to_owned(),
                String::from(TokenHash::of(token)),
                scope.to_owned(),
            )
        };
        assert!(tokens.authenticate(&theirs).is_none());
        // A clone (the router's copy) sees what is set later.
        let router = tokens.clone();
        tokens.set_fleet(&[
            published(&theirs, "admin"),
            // The same hash as an own token: the own entry decides.
            published(&own, "admin"),
            // Unreadable entries are skipped, not fatal.
            (
                "node-c".into(),
                "x".into(),
                "sha256:nothex".into(),
                "admin".into(),
            ),
            (
                "node-c".into(),
                "y".into(),
                String::from(TokenHash::of("t")),
                "root".into(),
            ),
        ]);
        let b = router.authenticate(&theirs).unwrap();
        assert_eq!(
            (b.name.as_str(), b.scope),
            ("local-admin@node-b", Scope::Admin)
        );
        assert_eq!(router.authenticate(&own).unwrap().scope, Scope::Submit);
        assert!(router.authenticate("t").is_none());
        assert_eq!(
            tokens.own(),
            vec![("ci".to_owned(), TokenHash::of(&own), Scope::Submit)]
        );
        tokens.set_fleet(&[]);
        assert!(
            router.authenticate(&theirs).is_none(),
            "a node gone takes its tokens"
        );
    }

    #[test]
    fn tokens_match_by_hash_and_carry_their_highest_scope() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        let tokens = Tokens::new(&[
            config("ci", &a, &[Scope::Read, Scope::Submit]),
            config("grafana", &b, &[Scope::Read]),
        ])
        .unwrap();
        let ci = tokens.authenticate(&a).unwrap();
        assert_eq!((ci.name.as_str(), ci.scope), ("ci", Scope::Submit));
        assert!(ci.allows(Scope::Read) && ci.allows(Scope::Submit) && !ci.allows(Scope::Admin));
        assert_eq!(tokens.authenticate(&b).unwrap().scope, Scope::Read);
        assert!(tokens.authenticate("aura_wrong").is_none());
        assert!(tokens.authenticate("").is_none());
        // A hash is stored and read as text; a malformed one is refused with a hint.
        let text: String = TokenHash::of(&a).into();
        assert_eq!(TokenHash::try_from(text).unwrap(), TokenHash::of(&a));
        assert!(TokenHash::try_from("md5:00".to_owned()).is_err());
        assert!(TokenHash::try_from(format!("sha256:{}", "g".repeat(64))).is_err());
        assert_eq!(format!("{:?}", TokenHash::of(&a)), "sha256:…");
    }

    #[test]
    fn bad_token_sets_are_refused() {
        let t = generate_token().unwrap();
        assert_eq!(
            Tokens::new(&[config("x", &t, &[])]).unwrap_err(),
            TokenError::NoScopes("x".into())
        );
        let u = generate_token().unwrap();
        assert!(matches!(
            Tokens::new(&[
                config("x", &t, &[Scope::Read]),
                config("x", &u, &[Scope::Read])
            ]),
            Err(TokenError::DuplicateName(_))
        ));
        assert!(matches!(
            Tokens::new(&[
                config("x", &t, &[Scope::Read]),
                config("y", &t, &[Scope::Read])
            ]),
            Err(TokenError::DuplicateHash(..))
        ));
        assert!(matches!(
            Tokens::new(&[config("bad name", &t, &[Scope::Read])]),
            Err(TokenError::InvalidName(_))
        ));
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer a b"), None);
        assert_eq!(bearer(b"Bearer \xff"), None);
    }
}
