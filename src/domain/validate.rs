//! Field checks shared by every request conversion. Each returns the cleaned value or a
//! [`FieldViolation`] naming the field, so a handler can report all bad fields at once.

use crate::error::FieldViolation;

fn violation(field: &str, description: impl Into<String>) -> FieldViolation {
    FieldViolation::new(field, description)
}

/// A human-readable name or title: trimmed, 1..=`max` characters, no control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, FieldViolation> {
    let v = value.trim();
    if v.is_empty() {
        return Err(violation(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(violation(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(violation(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// Optional text: empty stays empty, otherwise as [`text`].
pub fn optional_text(field: &str, value: &str, max: usize) -> Result<String, FieldViolation> {
    if value.trim().is_empty() {
        Ok(String::new())
    } else {
        text(field, value, max)
    }
}

/// A tenant slug: 3-63 of `[a-z0-9-]`, starting with a letter, not ending with `-`.
pub fn slug(field: &str, value: &str) -> Result<String, FieldViolation> {
    let ok = (3..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(violation(
            field,
            "must be 3-63 characters of a-z, 0-9 and '-', starting with a letter",
        ))
    }
}

/// An email address, lower-cased.
pub fn email(field: &str, value: &str) -> Result<String, FieldViolation> {
    let v = value.trim().to_lowercase();
    let ok = v.len() <= 254
        && v.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && v.matches('@').count() == 1;
    if ok {
        Ok(v)
    } else {
        Err(violation(field, "must be a valid email address"))
    }
}

/// A new password: 12-256 characters.
pub fn password(field: &str, value: &str) -> Result<String, FieldViolation> {
    let n = value.chars().count();
    if (12..=256).contains(&n) {
        Ok(value.to_owned())
    } else {
        Err(violation(field, "must be 12-256 characters"))
    }
}

/// A colour `#RRGGBB`; empty allowed (default).
pub fn color(field: &str, value: &str) -> Result<String, FieldViolation> {
    let ok = value.is_empty()
        || (value.len() == 7
            && value.starts_with('#')
            && value[1..].chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(violation(field, "must be a colour like #1a2b3c"))
    }
}

/// An https URL of at most 2048 characters; empty allowed.
pub fn https_url(field: &str, value: &str) -> Result<String, FieldViolation> {
    let ok = value.is_empty()
        || (value.len() <= 2048
            && value.starts_with("https://")
            && value.len() > "https://".len()
            && !value.chars().any(|c| c.is_whitespace() || c.is_control()));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(violation(field, "must be an https:// URL"))
    }
}

/// A website origin an API key may be used from: `scheme://host[:port]`, where the host may
/// start with `*.` to allow its subdomains. Returned normalised (lower case, IDNA, no default
/// port), the form [`origin_allowed`] reads back.
pub fn origin(field: &str, value: &str) -> Result<String, FieldViolation> {
    OriginRule::parse(value)
        .map(|r| r.to_string())
        .ok_or_else(|| {
            violation(
                field,
                "must be an origin like https://www.example.com or https://*.example.com",
            )
        })
}

/// Whether a browser `Origin` header is allowed by a list of origins from [`origin`].
pub fn origin_allowed(allowed: &[String], request_origin: &str) -> bool {
    let Some(o) = OriginRule::request(request_origin) else {
        return false;
    };
    allowed
        .iter()
        .filter_map(|a| OriginRule::parse(a))
        .any(|rule| rule.allows(&o))
}

/// An origin taken apart by the `url` crate, so that matching compares scheme, host and port
/// as a browser means them instead of comparing text, where a path, userinfo or a longer host
/// could pass for a subdomain.
#[derive(Debug, PartialEq, Eq)]
struct OriginRule {
    scheme: &'static str,
    host: url::Host<String>,
    /// The port, or the scheme's default when none is written.
    port: u16,
    /// `*.host`: any strict subdomain of `host`, never `host` itself.
    wildcard: bool,
}

impl OriginRule {
    /// A configured rule, `http(s)://[*.]host[:port]` with at most a trailing `/`; None for
    /// anything else (paths, queries, userinfo, other schemes, a wildcard on an IP address).
    fn parse(value: &str) -> Option<Self> {
        let v = value.trim().to_ascii_lowercase();
        let (scheme, rest) = v.split_once("://")?;
        let scheme = match scheme {
            "https" => "https",
            "http" => "http",
            _ => return None,
        };
        let (wildcard, rest) = match rest.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        // The url crate would quietly drop tabs and newlines or read `\` as `/`; an origin
        // rule has no business containing any of them.
        if authority.is_empty()
            || authority
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "/\\?#@*".contains(c))
        {
            return None;
        }
        let url = url::Url::parse(&format!("{scheme}://{authority}")).ok()?;
        let rule = Self::from_url(&url, scheme, wildcard)?;
        (!wildcard || matches!(rule.host, url::Host::Domain(_))).then_some(rule)
    }

    /// A request's `Origin` header; None unless it is exactly a serialised origin, the way
    /// browsers send it.
    fn request(value: &str) -> Option<Self> {
        let v = value.to_ascii_lowercase();
        let url = url::Url::parse(&v).ok()?;
        if url.origin().ascii_serialization() != v {
            return None;
        }
        let scheme = match url.scheme() {
            "https" => "https",
            "http" => "http",
            _ => return None,
        };
        Self::from_url(&url, scheme, false)
    }

    fn from_url(url: &url::Url, scheme: &'static str, wildcard: bool) -> Option<Self> {
        if !url.username().is_empty()
            || url.password().is_some()
            || url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return None;
        }
        let host = url.host()?.to_owned();
        if let url::Host::Domain(d) = &host
            && !dns_name(d)
        {
            return None;
        }
        let port = url.port_or_known_default().filter(|p| *p > 0)?;
        Some(Self {
            scheme,
            host,
            port,
            wildcard,
        })
    }

    fn allows(&self, o: &OriginRule) -> bool {
        if self.scheme != o.scheme || self.port != o.port {
            return false;
        }
        if !self.wildcard {
            return self.host == o.host;
        }
        match (&self.host, &o.host) {
            (url::Host::Domain(base), url::Host::Domain(h)) => h
                .strip_suffix(base.as_str())
                .and_then(|sub| sub.strip_suffix('.'))
                .is_some_and(|sub| !sub.is_empty()),
            _ => false,
        }
    }
}

impl std::fmt::Display for OriginRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        write!(f, "{}://{star}{}", self.scheme, self.host)?;
        let default = if self.scheme == "https" { 443 } else { 80 };
        if self.port != default {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// A host name of 1-63 character labels of `[a-z0-9-]` (IDNA already applied), at most 253
/// characters: no empty label, no trailing dot.
fn dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A UUID id field; `T` is the typed id.
pub fn id<T>(field: &str, value: &str, parse: fn(&str) -> Option<T>) -> Result<T, FieldViolation> {
    if value.is_empty() {
        return Err(violation(field, "is required"));
    }
    parse(value).ok_or_else(|| violation(field, "must be a UUID"))
}

/// A skill: name lower-cased, 1-64 of `[a-z0-9_-]`, level 1-10.
pub fn skill(field: &str, name: &str, level: u32) -> Result<(String, i16), FieldViolation> {
    let n = name.trim().to_lowercase();
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(violation(
            field,
            "skill name must be 1-64 of a-z, 0-9, '-', '_'",
        ));
    }
    match i16::try_from(level) {
        Ok(l) if (1..=10).contains(&l) => Ok((n, l)),
        _ => Err(violation(field, "skill level must be 1-10")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits() {
        assert!(text("name", "  ", 10).is_err());
        assert_eq!(text("name", " Acme ", 10).unwrap(), "Acme");
        assert!(text("name", &"x".repeat(11), 10).is_err());
        assert!(text("name", "a\u{0}b", 10).is_err());
    }

    #[test]
    fn slugs_and_emails() {
        assert!(slug("slug", "acme-co").is_ok());
        for bad in ["ab", "Acme", "1acme", "acme-", "ac me", "acmé"] {
            assert!(slug("slug", bad).is_err(), "{bad}");
        }
        assert_eq!(email("email", " Ann@Acme.Com ").unwrap(), "ann@acme.com");
        for bad in [
            "ann",
            "ann@",
            "@acme.com",
            "a@b@c.com",
            "a b@c.com",
            "a@com",
        ] {
            assert!(email("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_and_wildcards() {
        let allowed = vec![
            origin("d", "https://www.acme.com").unwrap(),
            origin("d", "https://*.shop.acme.com").unwrap(),
        ];
        assert!(origin_allowed(&allowed, "https://www.acme.com"));
        assert!(origin_allowed(&allowed, "https://eu.shop.acme.com"));
        assert!(origin_allowed(&allowed, "https://a.b.shop.acme.com"));
        assert!(!origin_allowed(&allowed, "https://shop.acme.com.evil.io"));
        assert!(!origin_allowed(&allowed, "https://evilshop.acme.com"));
        assert!(!origin_allowed(&allowed, "http://www.acme.com"));
        for bad in [
            "www.acme.com",
            "https://",
            "https://acme.com/path",
            "ftp://acme.com",
            "https://a..b",
        ] {
            assert!(origin("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_wildcard_matches_only_real_subdomains_on_its_scheme_and_port() {
        let rule = vec![origin("d", "https://*.x.example").unwrap()];
        assert!(origin_allowed(&rule, "https://a.x.example"));
        assert!(origin_allowed(&rule, "HTTPS://A.X.Example"));
        for bad in [
            // Paths, userinfo and longer hosts that end in the rule's text.
            "https://evil.com/.x.example",
            "https://evil.com/a.x.example",
            "https://evil.com?.x.example",
            "https://evil.com#.x.example",
            "https://x.example.evil.com",
            "https://a.x.example.evil.com",
            "https://x.example@evil.com",
            "https://a.x.example@evil.com",
            "https://user:pw@a.x.example",
            "https://evilx.example",
            // The bare domain is not a subdomain of itself.
            "https://x.example",
            "https://.x.example",
            "https://a..x.example",
            "https://a.x.example.",
            // Other ports and schemes.
            "https://a.x.example:8443",
            "http://a.x.example",
            "wss://a.x.example",
            "null",
            "",
            // Not how a browser writes an origin.
            "https://a.x.example/",
            "https://a.x.example:443",
            "https://a.x.example\t",
        ] {
            assert!(!origin_allowed(&rule, bad), "{bad:?} matched *.x.example");
        }
    }

    #[test]
    fn exact_rules_compare_scheme_host_and_port() {
        let rules = vec![
            origin("d", "http://localhost:3000").unwrap(),
            origin("d", "https://x.example:443/").unwrap(),
            origin("d", "https://bücher.example").unwrap(),
            origin("d", "http://[::1]:8080").unwrap(),
        ];
        assert_eq!(
            rules,
            [
                "http://localhost:3000",
                "https://x.example",
                "https://xn--bcher-kva.example",
                "http://[::1]:8080",
            ]
        );
        assert!(origin_allowed(&rules, "http://localhost:3000"));
        assert!(!origin_allowed(&rules, "http://localhost:3001"));
        assert!(!origin_allowed(&rules, "http://localhost"));
        assert!(!origin_allowed(&rules, "https://localhost:3000"));
        assert!(origin_allowed(&rules, "https://x.example"));
        assert!(!origin_allowed(&rules, "https://a.x.example"));
        assert!(!origin_allowed(&rules, "https://x.example:8443"));
        assert!(origin_allowed(&rules, "https://xn--bcher-kva.example"));
        assert!(origin_allowed(&rules, "http://[::1]:8080"));
        assert!(!origin_allowed(&rules, "http://[::2]:8080"));
    }

    #[test]
    fn malformed_or_tricky_rules_are_refused() {
        for bad in [
            "https://evil.com/.x.example",
            "https://*.x.example/path",
            "https://x.example@evil.com",
            "https://*.x.example@evil.com",
            "https://user@x.example",
            "https://x.example?q",
            "https://x.example#f",
            "https://*.*.x.example",
            "https://*x.example",
            "https://a.*.x.example",
            "https://*.127.0.0.1",
            "https://x.example:0",
            "https://x.example:99999",
            "https://x\n.example",
            "https://x\\.example",
            "https://x.example.",
            "javascript://x.example",
        ] {
            assert!(origin("d", bad).is_err(), "{bad:?} accepted as a rule");
        }
        // A stored rule that no longer parses allows nothing rather than something.
        assert!(!origin_allowed(
            &["https://*.x.example/evil".to_owned()],
            "https://a.x.example"
        ));
    }
}
