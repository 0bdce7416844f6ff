//! Opaque credentials: widget API keys (`cek_…`) and refresh tokens (`cer_…`).
//!
//! Layout after the prefix, base64url without padding: tenant id (16 bytes), credential id
//! (16 bytes), secret (32 random bytes), CRC-32 of the preceding 64 bytes (4 bytes). The
//! tenant id lets the server look the credential up inside that tenant's scope only; the
//! checksum rejects typos and junk before any database read. Only SHA-256 of the secret is
//! stored, and comparison is constant-time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Which kind of credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Widget API key.
    ApiKey,
    /// Refresh token.
    Refresh,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::ApiKey => "cek_",
            Kind::Refresh => "cer_",
        }
    }
}

const RAW_LEN: usize = 16 + 16 + 32 + 4;

/// A credential split into its parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Tenant it belongs to.
    pub tenant: Uuid,
    /// Its id.
    pub id: Uuid,
    secret: [u8; 32],
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("tenant", &self.tenant)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a credential string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Wrong prefix, length or encoding.
    #[error("malformed credential")]
    Malformed,
    /// The checksum does not match.
    #[error("credential checksum mismatch")]
    Checksum,
}

impl Credential {
    /// A fresh credential for `tenant` with id `id`.
    pub fn generate(tenant: Uuid, id: Uuid) -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill(&mut secret);
        Self { tenant, id, secret }
    }

    /// The string given to the user once.
    pub fn encode(&self, kind: Kind) -> String {
        let mut raw = Vec::with_capacity(RAW_LEN);
        raw.extend_from_slice(self.tenant.as_bytes());
        raw.extend_from_slice(self.id.as_bytes());
        raw.extend_from_slice(&self.secret);
        let crc = crc32fast::hash(&raw);
        raw.extend_from_slice(&crc.to_be_bytes());
        format!("{}{}", kind.prefix(), B64.encode(raw))
    }

    /// Parses and checks a credential string. Pure: no database is involved.
    pub fn parse(s: &str, kind: Kind) -> Result<Self, FormatError> {
        let body = s
            .strip_prefix(kind.prefix())
            .ok_or(FormatError::Malformed)?;
        // Bound the work before decoding anything a client sent.
        if body.len() != (RAW_LEN * 4).div_ceil(3) {
            return Err(FormatError::Malformed);
        }
        let raw = B64.decode(body).map_err(|_| FormatError::Malformed)?;
        if raw.len() != RAW_LEN {
            return Err(FormatError::Malformed);
        }
        let (payload, crc) = raw.split_at(RAW_LEN - 4);
        if crc32fast::hash(payload).to_be_bytes() != crc {
            return Err(FormatError::Checksum);
        }
        let uuid = |b: &[u8]| Uuid::from_slice(b).map_err(|_| FormatError::Malformed);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&payload[32..64]);
        Ok(Self {
            tenant: uuid(&payload[..16])?,
            id: uuid(&payload[16..32])?,
            secret,
        })
    }

    /// SHA-256 of the secret, the only form stored.
    pub fn secret_hash(&self) -> Vec<u8> {
        Sha256::digest(self.secret).to_vec()
    }

    /// Constant-time comparison with a stored hash.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        self.secret_hash().ct_eq(stored_hash).into()
    }
}

/// The first characters of an encoded credential, enough to recognise it in a list.
pub fn display_prefix(encoded: &str) -> String {
    encoded.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let c = Credential::generate(Uuid::now_v7(), Uuid::now_v7());
        let s = c.encode(Kind::ApiKey);
        assert!(s.starts_with("cek_"));
        let back = Credential::parse(&s, Kind::ApiKey).unwrap();
        assert_eq!(back, c);
        assert!(back.matches(&c.secret_hash()));
        assert_eq!(
            Credential::parse(&s, Kind::Refresh),
            Err(FormatError::Malformed)
        );

        // Flip one character of the secret part: the checksum catches it.
        let mut chars: Vec<char> = s.chars().collect();
        let i = 60;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(
            Credential::parse(&typo, Kind::ApiKey),
            Err(FormatError::Checksum)
        );

        assert_eq!(
            Credential::parse("cek_short", Kind::ApiKey),
            Err(FormatError::Malformed)
        );
        assert_eq!(
            Credential::parse(&"x".repeat(70_000), Kind::ApiKey),
            Err(FormatError::Malformed)
        );
    }

    #[test]
    fn other_secret_does_not_match() {
        let a = Credential::generate(Uuid::nil(), Uuid::nil());
        let b = Credential::generate(Uuid::nil(), Uuid::nil());
        assert!(!a.matches(&b.secret_hash()));
    }
}
