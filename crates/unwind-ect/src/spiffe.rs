//! Issuer ids and the patterns that match them.
//!
//! An id that starts with `spiffe://` must be a valid SPIFFE ID (the rules of spiffe.io's
//! SPIFFE-ID standard): a lowercase trust domain of `[a-z0-9.-_]`, then path segments of
//! `[a-zA-Z0-9.-_]`, none empty, `.` or `..`, no trailing `/`, no port, userinfo, query,
//! fragment or percent-escape, at most 2048 bytes. Anything else that looks like a SPIFFE ID is
//! refused before it can match a trust entry, so `spiffe://example.com/agent/../admin` can
//! neither pass as an agent nor read as "admin" anywhere.
//!
//! A pattern is an exact id, or (for SPIFFE ids only) a prefix ending in `/*` that matches every
//! id below it. Ids that are not SPIFFE ids match exactly.

use std::fmt;

/// The scheme prefix of a SPIFFE ID.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// Longest SPIFFE ID accepted, in bytes.
const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// Longest trust domain accepted, in bytes.
const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Checks `id` against the SPIFFE ID rules; the error says which rule it breaks.
pub fn check_spiffe_id(id: &str) -> Result<(), &'static str> {
    let rest = id
        .strip_prefix(SPIFFE_SCHEME)
        .ok_or("a SPIFFE ID starts with spiffe://")?;
    if id.len() > MAX_SPIFFE_ID_BYTES {
        return Err("a SPIFFE ID is at most 2048 bytes");
    }
    let (domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    check_trust_domain(domain)?;
    if let Some(path) = path {
        if path.is_empty() {
            return Err("a SPIFFE ID has no trailing /");
        }
        for segment in path.split('/') {
            check_segment(segment)?;
        }
    }
    Ok(())
}

fn check_trust_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("a SPIFFE ID needs a trust domain");
    }
    if domain.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err("a trust domain is at most 255 bytes");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(
            "a trust domain holds only a-z, 0-9, '.', '-' and '_' (no port, userinfo or uppercase)",
        );
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), &'static str> {
    match segment {
        "" => Err("a SPIFFE ID path has no empty segment"),
        "." | ".." => Err("a SPIFFE ID path has no '.' or '..' segment"),
        _ if segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
        {
            Ok(())
        }
        _ => Err(
            "a SPIFFE ID path holds only a-z, A-Z, 0-9, '.', '-' and '_' (no percent-escape, query, fragment, space or control)",
        ),
    }
}

/// True when `id` claims to be a SPIFFE ID (and must then be a valid one).
pub fn claims_spiffe(id: &str) -> bool {
    id.starts_with(SPIFFE_SCHEME)
}

/// Whether `id` may name an issuer at all: a valid SPIFFE ID, or any other id (matched exactly).
pub fn acceptable_issuer_id(id: &str) -> bool {
    !claims_spiffe(id) || check_spiffe_id(id).is_ok()
}

/// The trust domain (authority) of an id: the text between `://` and the next `/`.
/// `None` for an id without `://`.
pub fn trust_domain(id: &str) -> Option<&str> {
    let (_, rest) = id.split_once("://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// An exact issuer id, or a SPIFFE prefix ending in `/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    Exact(String),
    /// The prefix, ending in `/`; matches ids strictly longer than it.
    Below(String),
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{pattern}`: {why}")]
pub struct PatternError {
    pub pattern: String,
    pub why: String,
}

impl IdPattern {
    /// Parses a configured id or pattern: `/*` patterns only for SPIFFE ids, whose prefix must
    /// itself be a valid SPIFFE ID; a SPIFFE id must be valid.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let error = |why: &str| PatternError {
            pattern: pattern.to_owned(),
            why: why.to_owned(),
        };
        if let Some(base) = pattern.strip_suffix("/*") {
            if !claims_spiffe(pattern) {
                return Err(error(
                    "a `/*` pattern is allowed only for spiffe:// ids; other ids match exactly",
                ));
            }
            check_spiffe_id(base).map_err(error)?;
            return Ok(Self::Below(format!("{base}/")));
        }
        if pattern.contains('*') {
            return Err(error("a pattern must end in `/*` and have no other `*`"));
        }
        if claims_spiffe(pattern) {
            check_spiffe_id(pattern).map_err(error)?;
        } else if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(error(
                "an issuer id is non-empty, without spaces or control characters",
            ));
        }
        Ok(Self::Exact(pattern.to_owned()))
    }

    /// True when `id` is matched. Invalid SPIFFE ids never match a pattern.
    pub fn matches(&self, id: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == id,
            Self::Below(prefix) => {
                id.len() > prefix.len()
                    && id.starts_with(prefix.as_str())
                    && acceptable_issuer_id(id)
            }
        }
    }

    /// The trust domain of the pattern's ids.
    pub fn trust_domain(&self) -> Option<&str> {
        match self {
            Self::Exact(id) | Self::Below(id) => trust_domain(id),
        }
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => f.write_str(id),
            Self::Below(prefix) => write!(f, "{prefix}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_spiffe_ids() {
        for id in [
            "spiffe://example.com",
            "spiffe://example.com/agent/router",
            "spiffe://x/agent/a",
            "spiffe://my-domain_1.org/A.b-c_d/e",
        ] {
            assert_eq!(check_spiffe_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn invalid_spiffe_ids() {
        for id in [
            "spiffe://",
            "spiffe:///agent",
            "spiffe://example.com/",
            "spiffe://example.com/agent/../admin",
            "spiffe://example.com/agent/./a",
            "spiffe://example.com/agent//a",
            "spiffe://example.com/agent/%2e%2e",
            "spiffe://example.com/agent/a?x=1",
            "spiffe://example.com/agent/a#frag",
            "spiffe://example.com/agent/a b",
            "spiffe://example.com/agent/a\u{202e}nimda",
            "spiffe://example.com/agent/a\n",
            "spiffe://Example.com/agent",
            "spiffe://example.com:443/agent",
            "spiffe://user@example.com/agent",
            "spiffe://exa mple.com/agent",
            "spiffe://example.com/agent/é",
        ] {
            assert!(check_spiffe_id(id).is_err(), "{id:?}");
            assert!(!acceptable_issuer_id(id), "{id:?}");
        }
        let long = format!("spiffe://example.com/{}", "a".repeat(2048));
        assert!(check_spiffe_id(&long).is_err());
    }

    #[test]
    fn patterns() {
        let p = IdPattern::parse("spiffe://example.com/agent/*").unwrap();
        assert!(p.matches("spiffe://example.com/agent/router"));
        assert!(p.matches("spiffe://example.com/agent/a/b"));
        assert!(!p.matches("spiffe://example.com/agent"));
        assert!(!p.matches("spiffe://example.com/agent/"));
        assert!(!p.matches("spiffe://example.com/agentX"));
        assert!(!p.matches("spiffe://example.com/agent/../admin"));
        assert!(!p.matches("spiffe://example.com/agent/a%2fb"));
        assert!(!p.matches("spiffe://example.com/agent/a b"));
        assert_eq!(p.trust_domain(), Some("example.com"));
        assert_eq!(p.to_string(), "spiffe://example.com/agent/*");

        let domain = IdPattern::parse("spiffe://other.org/*").unwrap();
        assert!(domain.matches("spiffe://other.org/team/a"));

        let exact = IdPattern::parse("https://agents.example/a").unwrap();
        assert!(exact.matches("https://agents.example/a"));
        assert!(!exact.matches("https://agents.example/a/b"));
        assert_eq!(exact.trust_domain(), Some("agents.example"));

        for bad in [
            "https://agents.example/*",
            "spiffe://example.com/*/x",
            "spiffe://example.com/a*",
            "spiffe://example.com/../*",
            "spiffe://Example.com/a",
            "",
            "agent one",
        ] {
            assert!(IdPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trust_domains() {
        assert_eq!(
            trust_domain("spiffe://example.com/a/b"),
            Some("example.com")
        );
        assert_eq!(trust_domain("spiffe://example.com"), Some("example.com"));
        assert_eq!(trust_domain("urn:agent:x"), None);
    }
}
