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
/// start with `*.` to allow subdomains. Lower-cased, no path.
pub fn origin(field: &str, value: &str) -> Result<String, FieldViolation> {
    let v = value.trim().to_ascii_lowercase();
    let bad = || {
        violation(
            field,
            "must be an origin like https://www.example.com or https://*.example.com",
        )
    };
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if host_ok && port_ok {
        Ok(v)
    } else {
        Err(bad())
    }
}

/// Whether a browser `Origin` header is allowed by a list of origins from [`origin`].
pub fn origin_allowed(allowed: &[String], request_origin: &str) -> bool {
    let o = request_origin.to_ascii_lowercase();
    allowed.iter().any(|a| {
        if let Some((scheme, wildcard_host)) = a.split_once("://*.") {
            o.strip_prefix(scheme)
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|host| host.ends_with(&format!(".{wildcard_host}")))
        } else {
            *a == o
        }
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
}
