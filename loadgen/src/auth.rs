//! Credentials: HS256 JWTs minted from a shared secret, or tokens read from a file.
//!
//! Every connection gets its own user id (`<prefix><connection id>`, e.g. `u-42`), so
//! per-user server state (presence, rate limits) is exercised as with real users.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

/// Lifetime of minted tokens; longer than any run loadgen allows.
const TOKEN_LIFETIME_S: u64 = 24 * 3600;

/// Claims the contract reads: `sub` is the user id, `username` the display name.
#[derive(Serialize)]
struct Claims<'a> {
    /// User id.
    sub: &'a str,
    /// Display name (the same as the user id).
    username: &'a str,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
}

/// Mints HS256 tokens; cheap enough (a few µs each) to do right before each connect.
pub struct Minter {
    /// HMAC key from the secret.
    key: EncodingKey,
    /// `{"alg":"HS256","typ":"JWT"}`.
    header: Header,
    /// `exp` for every token minted by this minter.
    exp: u64,
}

impl Minter {
    /// A minter for `secret`, with tokens valid for one day from now.
    pub fn new(secret: &str) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Minter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::default(),
            exp: now + TOKEN_LIFETIME_S,
        }
    }

    /// A signed token for `user`.
    pub fn token(&self, user: &str) -> String {
        let claims = Claims {
            sub: user,
            username: user,
            exp: self.exp,
        };
        // HS256 signing of a serializable struct cannot fail.
        jsonwebtoken::encode(&self.header, &claims, &self.key).expect("HS256 signing failed")
    }
}

/// The user id of connection `id`.
pub fn user_id(prefix: &str, id: u64) -> String {
    format!("{prefix}{id}")
}

/// Reads one token per line; blank lines and lines starting with `#` are skipped.
pub fn read_tokens_file(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading tokens file {}", path.display()))?;
    let tokens = parse_tokens(&text);
    ensure!(!tokens.is_empty(), "{}: no tokens", path.display());
    Ok(tokens)
}

fn parse_tokens(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Decoded {
        sub: String,
        username: String,
        exp: u64,
    }

    #[test]
    fn minted_token_verifies_with_the_secret() {
        let minter = Minter::new("s3cret");
        let token = minter.token(&user_id("u-", 7));
        let data = jsonwebtoken::decode::<Decoded>(
            &token,
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .unwrap();
        assert_eq!(data.claims.sub, "u-7");
        assert_eq!(data.claims.username, "u-7");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(data.claims.exp > now + 23 * 3600 && data.claims.exp <= now + 24 * 3600);
        // A wrong secret is rejected.
        assert!(jsonwebtoken::decode::<Decoded>(
            &token,
            &DecodingKey::from_secret(b"other"),
            &Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .is_err());
    }

    #[test]
    fn tokens_file_skips_blanks_and_comments() {
        let t = parse_tokens("# tokens\n aaa.bbb.ccc \n\nddd.eee.fff\n");
        assert_eq!(t, vec!["aaa.bbb.ccc", "ddd.eee.fff"]);
    }
}
