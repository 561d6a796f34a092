//! Recipient domains an incident covers (`spec.scope.recipientDomains`): exact domains and
//! `*.` subdomain wildcards, as the controller checks them, the mode document carries them
//! and every agent matches recipients against them.

use std::fmt;

/// Most entries a scope may list (also in the schema).
pub const MAX_SCOPE_DOMAINS: usize = 1000;
/// Longest domain name (RFC 1035), also in the schema.
pub const MAX_DOMAIN_LENGTH: usize = 253;
/// Longest label of a domain name (RFC 1035).
const MAX_LABEL_LENGTH: usize = 63;

/// One entry of a scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DomainPattern {
    /// Exactly this domain.
    Exact(String),
    /// Every subdomain of this domain, not the domain itself (`*.example.com`).
    Subdomains(String),
}

impl DomainPattern {
    /// Parses an entry as written in a spec or a mode document: lower-case, a valid DNS
    /// name, optionally after `*.`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (pattern, name): (fn(String) -> Self, &str) = match text.strip_prefix("*.") {
            Some(parent) => (Self::Subdomains, parent),
            None => (Self::Exact, text),
        };
        if let Some(problem) = domain_problem(name) {
            return Err(format!("{text:?} {problem}"));
        }
        Ok(pattern(name.to_string()))
    }

    /// Whether `domain` (lower-case, without a trailing dot) is covered.
    pub fn covers(&self, domain: &str) -> bool {
        match self {
            Self::Exact(exact) => domain == exact,
            Self::Subdomains(parent) => is_subdomain(domain, parent),
        }
    }

    /// Whether every domain `other` covers is covered by this pattern too.
    pub fn includes(&self, other: &DomainPattern) -> bool {
        match other {
            Self::Exact(domain) => self.covers(domain),
            Self::Subdomains(parent) => match self {
                Self::Exact(_) => false,
                Self::Subdomains(own) => parent == own || self.covers(parent),
            },
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(domain) => f.write_str(domain),
            Self::Subdomains(parent) => write!(f, "*.{parent}"),
        }
    }
}

/// Whether the entry `pattern`, as written and already checked (`example.com` or
/// `*.example.com`), covers `domain`: what [`DomainPattern::covers`] says, without
/// building the pattern, for matching every RCPT against a scope of up to 1000 entries.
pub fn entry_covers(pattern: &str, domain: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => is_subdomain(domain, parent),
        None => domain == pattern,
    }
}

/// Whether `domain` lies below `parent` (at a label boundary, not `parent` itself).
fn is_subdomain(domain: &str, parent: &str) -> bool {
    domain
        .strip_suffix(parent)
        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
}

/// Why `name` is not a lower-case DNS name, if it is not.
fn domain_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > MAX_DOMAIN_LENGTH {
        return Some("must be a domain name of 1 to 253 characters");
    }
    let label_ok = |label: &str| {
        (1..=MAX_LABEL_LENGTH).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Some(
            "is not a lower-case domain name: labels of 1 to 63 letters a-z, digits and '-' (not at either end), separated by dots; '*.' may only start it",
        );
    }
    None
}

/// The domain of a recipient address, lower-cased and without a trailing dot, as scopes
/// are matched against it; `None` for an address without a domain.
pub fn recipient_domain(address: &str) -> Option<String> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_domains_and_subdomain_wildcards_cover_what_they_say() {
        let exact = DomainPattern::parse("pec.example.it").unwrap();
        let below = DomainPattern::parse("*.example.it").unwrap();
        assert!(exact.covers("pec.example.it"));
        assert!(!exact.covers("x.pec.example.it"));
        assert!(below.covers("pec.example.it") && below.covers("a.b.example.it"));
        assert!(!below.covers("example.it"), "not the parent itself");
        assert!(!below.covers("badexample.it"), "only at a label boundary");
        for domain in [
            "pec.example.it",
            "x.pec.example.it",
            "example.it",
            "badexample.it",
        ] {
            for pattern in [&exact, &below] {
                assert_eq!(
                    entry_covers(&pattern.to_string(), domain),
                    pattern.covers(domain),
                    "{pattern} {domain}"
                );
            }
        }
        assert!(below.includes(&exact));
        assert!(!exact.includes(&below));
        assert!(below.includes(&DomainPattern::parse("*.pec.example.it").unwrap()));
        assert!(
            !DomainPattern::parse("*.pec.example.it")
                .unwrap()
                .includes(&below)
        );
        assert_eq!(below.to_string(), "*.example.it");
    }

    #[test]
    fn entries_must_be_lower_case_dns_names() {
        for bad in [
            "",
            "*.",
            "Example.it",
            "a..b",
            "-a.it",
            "a-.it",
            "a.*.it",
            "**.it",
            "a_b.it",
            "user@a.it",
            &format!("{}.it", "a".repeat(64)),
            &format!("{}a", "a.".repeat(127)),
        ] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(DomainPattern::parse("xn--80ak6aa92e.com").is_ok());
        assert!(DomainPattern::parse("localhost").is_ok());
    }

    #[test]
    fn a_recipients_domain_is_matched_case_blind() {
        assert_eq!(
            recipient_domain("<User@PEC.Example.IT.>").as_deref(),
            Some("pec.example.it")
        );
        assert_eq!(recipient_domain("\"a@b\"@c.it").as_deref(), Some("c.it"));
        assert_eq!(recipient_domain("postmaster"), None);
    }
}
