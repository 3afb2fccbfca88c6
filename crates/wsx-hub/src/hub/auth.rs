//! Connection tokens: JWTs signed with HS256 (a shared secret) or RS256 (the hub holds
//! the public key). Claims: `sub` (the user id), `exp` (expiry, required), and optional
//! `channels` (subscribed on connect).

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// How connection tokens are checked.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct AuthConfig {
    /// HS256 secret.
    pub hmac_secret: Option<String>,
    /// RS256 public key (PEM).
    pub rsa_public_key_pem: Option<String>,
    /// Accept connections without a token (as user ""). Default: true only when no key
    /// is configured.
    pub allow_anonymous: Option<bool>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hmac_secret",
                &self.hmac_secret.as_ref().map(|_| "<secret>"),
            )
            .field("rsa_public_key_pem", &self.rsa_public_key_pem.is_some())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry (seconds since the Unix epoch).
    pub exp: u64,
    /// Channels to subscribe on connect.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// A verified channel token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelClaims {
    /// The user the token was issued to.
    pub sub: String,
    /// The channel it grants.
    pub channel: String,
    /// Expiry.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No token, and anonymous connections are not allowed.
    Missing,
    /// The token expired.
    Expired,
    /// Bad signature, algorithm, or format.
    Invalid(String),
}

/// Constant-time comparison of secrets (API keys, passcodes), so a secret cannot be
/// guessed byte by byte from timing.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    // Every byte of the longer is looked at, whether or not the lengths match, so the
    // time taken does not say where the first difference is.
    let longer = a.len().max(b.len());
    let diff = (0..longer).fold(u8::from(a.len() != b.len()), |acc, i| {
        acc | (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0))
    });
    diff == 0
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Missing => f.write_str("a token is required"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

impl AuthConfig {
    /// Whether connections without a token are accepted.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous
            .unwrap_or(self.hmac_secret.is_none() && self.rsa_public_key_pem.is_none())
    }

    /// Check a connect token (`None`: none was given). `Ok(None)` is an anonymous
    /// connection.
    pub fn verify(&self, token: Option<&str>) -> Result<Option<Claims>, TokenError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return if self.anonymous_allowed() {
                Ok(None)
            } else {
                Err(TokenError::Missing)
            };
        };
        self.decode(token).map(Some)
    }

    /// Check a channel token (private channels, whose name starts with `$`) for `user`
    /// and `channel`.
    pub fn verify_channel(&self, token: &str, user: &str, channel: &str) -> Result<(), TokenError> {
        let claims: ChannelClaims = self.decode(token)?;
        if claims.sub != user || claims.channel != channel {
            return Err(TokenError::Invalid(
                "token is for another user or channel".into(),
            ));
        }
        Ok(())
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, token: &str) -> Result<T, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hmac_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            Algorithm::RS256 => match &self.rsa_public_key_pem {
                Some(pem) => Some(
                    DecodingKey::from_rsa_pem(pem.as_bytes())
                        .map_err(|e| TokenError::Invalid(e.to_string()))?,
                ),
                None => None,
            },
            _ => None,
        };
        let key = key.ok_or_else(|| {
            TokenError::Invalid(format!("algorithm {:?} not accepted", header.alg))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        decode::<T>(token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn hs(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn cfg() -> AuthConfig {
        AuthConfig {
            hmac_secret: Some("s3cret".into()),
            ..Default::default()
        }
    }

    #[test]
    fn valid_hs256_token() {
        let t = hs(
            "s3cret",
            json!({"sub": "alice", "exp": now() + 60, "channels": ["news"]}),
        );
        let c = cfg().verify(Some(&t)).unwrap().unwrap();
        assert_eq!(
            (c.sub.as_str(), c.channels),
            ("alice", vec!["news".to_string()])
        );
    }

    #[test]
    fn expired_token() {
        let t = hs("s3cret", json!({"sub": "alice", "exp": now() - 1}));
        assert_eq!(cfg().verify(Some(&t)), Err(TokenError::Expired));
    }

    #[test]
    fn wrong_signature_and_missing_claims() {
        let t = hs("other", json!({"sub": "alice", "exp": now() + 60}));
        assert!(matches!(
            cfg().verify(Some(&t)),
            Err(TokenError::Invalid(_))
        ));
        let t = hs("s3cret", json!({"sub": "alice"}));
        assert!(matches!(
            cfg().verify(Some(&t)),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            cfg().verify(Some("garbage")),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn anonymous_only_where_allowed() {
        assert_eq!(cfg().verify(None), Err(TokenError::Missing));
        assert_eq!(AuthConfig::default().verify(None), Ok(None));
        let open = AuthConfig {
            allow_anonymous: Some(true),
            ..cfg()
        };
        assert_eq!(open.verify(None), Ok(None));
    }

    #[test]
    fn an_unconfigured_algorithm_is_refused() {
        // An HS256 token when only an RSA key is configured (algorithm confusion).
        let rsa_only = AuthConfig {
            rsa_public_key_pem: Some("not used".into()),
            ..Default::default()
        };
        let t = hs("anything", json!({"sub": "x", "exp": now() + 60}));
        assert!(matches!(
            rsa_only.verify(Some(&t)),
            Err(TokenError::Invalid(_))
        ));
    }
}
