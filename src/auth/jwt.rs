//! Access tokens for agents and visitors: HS256 JWTs whose algorithm is fixed by the key id,
//! never taken from the token. `iss`, `aud`, `exp` and `sub` are required; agent and visitor
//! tokens have different audiences, so one can never stand in for the other. An agent token
//! also names its session (`sid`, the refresh-token family), so revoking the session can
//! refuse the access tokens issued in it; its role claim is informational, the directory
//! (`auth::directory`) decides.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};

/// Audience of agent access tokens.
pub const AGENT_AUDIENCE: &str = "chat-engine/agent";
/// Audience of visitor tokens.
pub const VISITOR_AUDIENCE: &str = "chat-engine/visitor";
/// Seconds an expired token is still accepted, for clocks that differ between nodes.
pub const LEEWAY_SECS: u64 = 30;

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: the agent or visitor id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Agent role (`admin`/`agent`) when issued or, for visitors, the widget key id.
    pub ctx: String,
    /// Agent tokens: the session (refresh-token family) they were issued in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
}

struct Key {
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The signing keys, by key id.
pub struct JwtKeys {
    current_kid: String,
    keys: HashMap<String, Key>,
    issuer: String,
}

impl JwtKeys {
    /// One HMAC key under `kid`.
    pub fn hmac(kid: &str, secret: &[u8], issuer: &str) -> AppResult<Self> {
        let bad = |e: jsonwebtoken::errors::Error| AppError::Internal(format!("jwt key: {e}"));
        let key = Key {
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret).map_err(bad)?,
            decoding: DecodingKey::from_secret(secret).map_err(bad)?,
        };
        Ok(Self {
            current_kid: kid.to_owned(),
            keys: HashMap::from([(kid.to_owned(), key)]),
            issuer: issuer.to_owned(),
        })
    }

    /// The issuer stamped on tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs claims with the current key.
    pub fn sign(&self, claims: &Claims) -> AppResult<String> {
        let key = &self.keys[&self.current_kid];
        let mut header = Header::new(key.alg);
        header.kid = Some(self.current_kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| AppError::Internal(format!("signing token: {e}")))
    }

    /// Verifies a token for `audience` and returns its claims.
    pub fn verify(&self, token: &str, audience: &str) -> AppResult<Claims> {
        let invalid = || AppError::Unauthenticated("invalid or expired token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or_else(invalid)?;
        let mut v = Validation::new(key.alg);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.set_audience(&[audience]);
        v.set_issuer(&[&self.issuer]);
        v.leeway = LEEWAY_SECS;
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &v)
            .map(|d| d.claims)
            .map_err(|_| invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn keys() -> JwtKeys {
        JwtKeys::hmac("k1", b"0123456789abcdef0123456789abcdef", "chat-engine").unwrap()
    }

    fn claims(exp_offset: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: "chat-engine".into(),
            aud: AGENT_AUDIENCE.into(),
            sub: "u".into(),
            tid: "t".into(),
            ctx: "agent".into(),
            sid: None,
            iat: now,
            exp: now + exp_offset,
        }
    }

    #[test]
    fn round_trip_and_audience_separation() {
        let k = keys();
        let t = k.sign(&claims(60)).unwrap();
        assert_eq!(k.verify(&t, AGENT_AUDIENCE).unwrap().sub, "u");
        assert!(k.verify(&t, VISITOR_AUDIENCE).is_err());
    }

    #[test]
    fn rejects_alg_none_tampering_expiry_and_unknown_kid() {
        let k = keys();
        let t = k.sign(&claims(60)).unwrap();
        let parts: Vec<&str> = t.split('.').collect();

        let none_header = B64.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        assert!(
            k.verify(&format!("{none_header}.{}.", parts[1]), AGENT_AUDIENCE)
                .is_err()
        );

        let mut c = claims(60);
        c.tid = "other-tenant".into();
        let forged = B64.encode(serde_json::to_vec(&c).unwrap());
        assert!(
            k.verify(
                &format!("{}.{forged}.{}", parts[0], parts[2]),
                AGENT_AUDIENCE
            )
            .is_err()
        );

        let expired = k.sign(&claims(-120)).unwrap();
        assert!(k.verify(&expired, AGENT_AUDIENCE).is_err());

        let other =
            JwtKeys::hmac("k2", b"0123456789abcdef0123456789abcdef", "chat-engine").unwrap();
        assert!(
            k.verify(&other.sign(&claims(60)).unwrap(), AGENT_AUDIENCE)
                .is_err()
        );
    }
}
