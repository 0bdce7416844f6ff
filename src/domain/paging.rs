//! Keyset pagination with opaque page tokens. A token carries the last position of a page and
//! an HMAC over that position and its binding (tenant, RPC and filters), so a token from
//! another tenant or another query is refused instead of leaking or skipping rows.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

use crate::error::{AppError, AppResult};

/// Default page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page; larger requests are lowered to it.
pub const MAX_PAGE_SIZE: i64 = 200;

/// Coerces a requested page size (AIP-158): 0 means the default, above the max means the max.
pub fn page_size(requested: i32) -> AppResult<i64> {
    match requested {
        n if n < 0 => Err(AppError::field("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// Seals and opens page tokens.
#[derive(Clone)]
pub struct PageTokens {
    key: Vec<u8>,
}

impl PageTokens {
    /// Tokens signed with `key`.
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, binding: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(binding.as_bytes());
        mac.update(b"\n");
        mac.update(payload);
        mac
    }

    /// A token for `position`, valid only for `binding`.
    pub fn seal<P: Serialize>(&self, binding: &str, position: &P) -> String {
        let payload = serde_json::to_vec(position).expect("positions serialise");
        let tag = self.mac(binding, &payload).finalize().into_bytes();
        format!("{}.{}", B64.encode(&payload), B64.encode(tag))
    }

    /// The position in `token`, or None for an empty token (first page).
    pub fn open<P: DeserializeOwned>(&self, binding: &str, token: &str) -> AppResult<Option<P>> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || AppError::field("page_token", "invalid page token for this query");
        if token.len() > 1024 {
            return Err(bad());
        }
        let (payload, tag) = token.split_once('.').ok_or_else(bad)?;
        let payload = B64.decode(payload).map_err(|_| bad())?;
        let tag = B64.decode(tag).map_err(|_| bad())?;
        self.mac(binding, &payload)
            .verify_slice(&tag)
            .map_err(|_| bad())?;
        serde_json::from_slice(&payload)
            .map(Some)
            .map_err(|_| bad())
    }
}

/// A page of results.
pub struct Page<T> {
    /// Items.
    pub items: Vec<T>,
    /// Token for the next page, empty at the end.
    pub next_page_token: String,
}

/// Splits one extra fetched row off a page: returns the page and whether more rows follow.
pub fn split_page<T>(mut rows: Vec<T>, size: i64) -> (Vec<T>, bool) {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let more = rows.len() > size;
    rows.truncate(size);
    (rows, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_their_query() {
        let t = PageTokens::new(b"k");
        let tok = t.seal("tenant:a|ListAgents", &("x@y".to_owned(),));
        let back: Option<(String,)> = t.open("tenant:a|ListAgents", &tok).unwrap();
        assert_eq!(back.unwrap().0, "x@y");
        assert!(t.open::<(String,)>("tenant:b|ListAgents", &tok).is_err());
        assert!(
            t.open::<(String,)>("tenant:a|ListAgents", "garbage")
                .is_err()
        );
        assert!(
            t.open::<(String,)>("tenant:a|ListAgents", "")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn page_size_is_coerced() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(1000).unwrap(), MAX_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert!(page_size(-1).is_err());
    }
}
