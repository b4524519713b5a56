//! JWT verification: who a WebSocket connection or an HTTP request belongs to.
//!
//! The contract (section 2) accepts HS256 tokens signed with `JWT_SECRET`, and optionally
//! RS256/ES256 tokens checked against the public key in `JWT_PUBLIC_KEY`. A [`Verifier`] is
//! configured for exactly one algorithm and refuses every other one, whatever the token's
//! header claims: accepting the header's word is how `alg: none` and HS256-signed-with-the-
//! public-key forgeries get in. The header is therefore read and checked by this module before
//! jsonwebtoken sees the token, which also lets `none` (which jsonwebtoken cannot even parse) be
//! reported as a wrong algorithm rather than a malformed token.
//!
//! Verification is pure CPU work with no I/O, cheap enough to run on the accepting core.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Clock skew tolerated on `exp` and `nbf`, in seconds. Tokens are minted on other machines whose
/// clocks drift; a few seconds keeps a fresh token from being refused as "not yet valid" while
/// still expiring tokens essentially on time.
pub const LEEWAY_SECS: u64 = 5;

/// Longest accepted user id, in bytes. User ids are keys of presence and rate-limit tables and
/// are repeated in every message, so an unbounded one would be a cheap way to waste memory.
pub const MAX_USER_ID_LEN: usize = 128;

/// Who a connection or HTTP request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable id (`sub`, else `userId`); shared by every message and table entry of the user.
    pub user_id: Arc<str>,
    /// Display name shown to others; falls back to the user id so it is never empty.
    pub username: Arc<str>,
    /// The token grants the operator API (contract section 8): its `role` claim is `"admin"`
    /// or its `roles` array contains `"admin"`. Checked by the operator routes only.
    pub admin: bool,
}

/// A verified token: whose it is and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Who the token belongs to.
    pub identity: Identity,
    /// The `exp` claim in whole Unix seconds (a fraction cut off, a value
    /// past u64 saturated); None when the token has none. A connection
    /// opened or refreshed with it is closed once it passes (plus
    /// `TOKEN_EXPIRY_GRACE_MS`).
    pub exp: Option<u64>,
}

/// Why a token was refused. The `Display` text is short and meant for the `error` field of a
/// 401 JSON body, so it says what is wrong without echoing the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token was given.
    #[error("missing token")]
    Missing,
    /// Not a JWT: wrong number of parts, bad base64 or bad JSON.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match the key.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// Signed with an algorithm other than the configured one (including `none`).
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    /// Neither `sub` nor `userId` gives a non-empty user id.
    #[error("token has no subject")]
    MissingSubject,
    /// Any other refusal, with the reason.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies tokens: HS256 with the shared secret; optionally RS256/ES256 with a PEM public key.
#[derive(Clone)]
pub struct Verifier {
    /// The secret or public key every token must be signed with.
    key: DecodingKey,
    /// The one algorithm accepted; compared with the header before anything else.
    algorithm: Algorithm,
    /// jsonwebtoken's checks: the algorithm and the signature. `exp` and `nbf` are checked
    /// by [`Claims::identity`] against the wall clock the caller passes, not jsonwebtoken's.
    validation: Validation,
}

impl fmt::Debug for Verifier {
    /// Shows the algorithm only: the key may be the shared secret, which must not reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for HS256 tokens signed with `secret` (`JWT_SECRET`).
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// A verifier for tokens signed with the private half of `pem` (`JWT_PUBLIC_KEY`); HS256
    /// tokens are then refused.
    ///
    /// The key type picks the algorithm: an RSA public key gives RS256, an EC (P-256) public key
    /// ES256. A private key is refused rather than silently misused as a public one.
    pub fn with_public_key_pem(pem: &[u8]) -> Result<Verifier, AuthError> {
        if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(AuthError::Invalid(
                "expected a public key, got a private key".to_owned(),
            ));
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Verifier::new(key, Algorithm::RS256));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Verifier::new(key, Algorithm::ES256));
        }
        Err(AuthError::Invalid(
            "public key is not an RSA or EC public key in PEM form".to_owned(),
        ))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        // `exp` is checked when present but not required (contract section 2); both times
        // are checked in `Claims::identity` against the clock the caller reads, so that a
        // token verified on a core (a `refresh`) is judged at the time the core passes in.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // No audience is configured; tokens minted for several services carry one and are fine.
        validation.validate_aud = false;
        Verifier {
            key,
            algorithm,
            validation,
        }
    }

    /// The algorithm this verifier accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks `token` (the bare JWT, without `Bearer `) now and says whose it is.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, SystemTime::now()).map(|v| v.identity)
    }

    /// Checks `token` as of the wall-clock time `wall` (`exp` and `nbf` with
    /// [`LEEWAY_SECS`]) and says whose it is and until when.
    pub fn verify_at(&self, token: &str, wall: SystemTime) -> Result<Verified, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        self.check_algorithm(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(map_jwt_error)?;
        data.claims.verified(unix_secs(wall))
    }

    /// Refuses a token whose header names any algorithm but ours, before jsonwebtoken runs.
    fn check_algorithm(&self, token: &str) -> Result<(), AuthError> {
        /// The only header field we need; jsonwebtoken's `Header` cannot represent `none`.
        #[derive(Deserialize)]
        struct RawHeader {
            /// The algorithm the token claims to be signed with.
            alg: String,
        }
        let (header, rest) = token.split_once('.').ok_or(AuthError::Malformed)?;
        if rest.split('.').count() != 2 {
            return Err(AuthError::Malformed);
        }
        let json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthError::Malformed)?;
        let header: RawHeader = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
        if header.alg != algorithm_name(self.algorithm) {
            return Err(AuthError::WrongAlgorithm);
        }
        Ok(())
    }
}

/// The `alg` header value of an algorithm we may be configured with.
fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // Verifier::new is only called with the three above.
        _ => "",
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::Invalid("token not yet valid".to_owned()),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        _ => AuthError::Invalid(e.to_string()),
    }
}

/// The claims we read. Held as raw JSON values because issuers disagree on types (numeric user
/// ids are common) and a type mismatch should name the claim rather than fail as "malformed".
#[derive(Deserialize)]
struct Claims {
    /// Standard subject: the user id.
    #[serde(default)]
    sub: Option<Value>,
    /// User id used by issuers that do not set `sub`.
    #[serde(rename = "userId", default)]
    user_id: Option<Value>,
    /// First choice of display name.
    #[serde(default)]
    username: Option<Value>,
    /// Second choice of display name.
    #[serde(default)]
    name: Option<Value>,
    /// Third choice of display name (OpenID Connect).
    #[serde(default)]
    preferred_username: Option<Value>,
    /// Expiry, checked in `verified` (any non-negative number).
    #[serde(default)]
    exp: Option<Value>,
    /// Not-before, checked in `verified` like `exp`.
    #[serde(default)]
    nbf: Option<Value>,
    /// A single role; `"admin"` grants the operator API.
    #[serde(default)]
    role: Option<Value>,
    /// A list of roles; one equal to `"admin"` grants the operator API.
    #[serde(default)]
    roles: Option<Value>,
}

/// The role that grants the operator API.
pub const ADMIN_ROLE: &str = "admin";

/// Whether the `role` / `roles` claims grant [`ADMIN_ROLE`]. Only exact strings count: a
/// differently cased name, a number or a nested value grants nothing.
fn is_admin(role: Option<&Value>, roles: Option<&Value>) -> bool {
    let single = matches!(role, Some(Value::String(r)) if r == ADMIN_ROLE);
    let listed = match roles {
        Some(Value::Array(list)) => list
            .iter()
            .any(|r| matches!(r, Value::String(r) if r == ADMIN_ROLE)),
        _ => false,
    };
    single || listed
}

impl Claims {
    /// `now_secs`: the wall clock in Unix seconds. Every form of number is checked here
    /// (jsonwebtoken would check only a u64 and silently skip a fraction or a value past u64,
    /// both valid JSON numbers).
    fn verified(self, now_secs: f64) -> Result<Verified, AuthError> {
        let leeway = LEEWAY_SECS as f64;
        let mut exp = None;
        for (name, value) in [("exp", &self.exp), ("nbf", &self.nbf)] {
            match value {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(|t| t >= 0.0) => {
                    let t = n.as_f64().unwrap_or_default();
                    if name == "exp" {
                        if t + leeway < now_secs {
                            return Err(AuthError::Expired);
                        }
                        // `as` saturates: 1e300 is u64::MAX, a fraction is cut off.
                        exp = Some(n.as_u64().unwrap_or(t as u64));
                    }
                    if name == "nbf" && t > now_secs + leeway {
                        return Err(AuthError::Invalid("token not yet valid".to_owned()));
                    }
                }
                Some(_) => {
                    return Err(AuthError::Invalid(format!(
                        "{name} claim must be a non-negative number"
                    )))
                }
            }
        }
        let user_id = match (self.sub, self.user_id) {
            (Some(sub), _) if !sub.is_null() => user_id_from(sub, "sub")?,
            (_, Some(id)) if !id.is_null() => user_id_from(id, "userId")?,
            _ => return Err(AuthError::MissingSubject),
        };
        if user_id.is_empty() {
            return Err(AuthError::MissingSubject);
        }
        if user_id.len() > MAX_USER_ID_LEN {
            return Err(AuthError::Invalid(format!(
                "user id longer than {MAX_USER_ID_LEN} bytes"
            )));
        }
        let username = [self.username, self.name, self.preferred_username]
            .into_iter()
            .find_map(|v| match v {
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                _ => None,
            })
            .map(|s| display_name(&s))
            .filter(|s| !s.is_empty());
        let user_id: Arc<str> = user_id.into();
        let identity = Identity {
            username: username.map_or_else(|| user_id.clone(), Arc::from),
            user_id,
            admin: is_admin(self.role.as_ref(), self.roles.as_ref()),
        };
        Ok(Verified { identity, exp })
    }
}

/// `wall` in Unix seconds (0 before 1970).
fn unix_secs(wall: SystemTime) -> f64 {
    wall.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Longest display name, in characters (Unicode scalar values); the rest of a
/// longer claim is cut off, so one token cannot make every message it sends
/// carry kilobytes of name.
pub const MAX_USERNAME_CHARS: usize = 64;

/// Whether `c` is a bidirectional formatting character: embeddings and
/// overrides (U+202A..U+202E), isolates (U+2066..U+2069) and the marks
/// U+200E, U+200F, U+061C. They would let a name reorder the text shown
/// after it in other members' clients.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// The display name shown for a claim: control and bidi formatting
/// characters removed, then cut to [`MAX_USERNAME_CHARS`]. May be empty (the
/// caller falls back to the user id).
pub fn display_name(claim: &str) -> String {
    claim
        .chars()
        .filter(|&c| !c.is_control() && !is_bidi_control(c))
        .take(MAX_USERNAME_CHARS)
        .collect()
}

/// A user id claim as a string: strings as they are, integers in decimal.
fn user_id_from(value: Value, claim: &str) -> Result<String, AuthError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        _ => Err(AuthError::Invalid(format!(
            "{claim} claim must be a string or an integer"
        ))),
    }
}

/// Claims of a minted token.
#[derive(Serialize)]
struct MintClaims<'a> {
    /// The user id (`sub`), what the server takes as the user's identity.
    sub: &'a str,
    /// Display name, when one is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    /// Issue time, for whoever inspects the token.
    iat: u64,
    /// Expiry, when a lifetime is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

/// Mints an HS256 token (development tokens, tests, load tools). `exp` = now + ttl when ttl is Some.
pub fn mint_hs256(
    secret: &[u8],
    user_id: &str,
    username: Option<&str>,
    ttl_secs: Option<u64>,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = MintClaims {
        sub: user_id,
        username,
        iat: now,
        exp: ttl_secs.map(|ttl| now.saturating_add(ttl)),
    };
    // HMAC signing with plain string and number claims has no failure mode.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    /// RSA 2048 key pair generated once with `openssl genpkey -algorithm RSA`.
    const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC9sUqYWJbdSih3
rzqBbeUOdnUyxM26HErHhKb38WWV2zqtI0Owk4qeDcHf7aZDKFo0eeJCueOMbMiZ
ZhrEg/DcBMDFOTc5cr7UHKyDriLwrorNS2TcSP9ifRyQZ01rNalytPDx0ksoDAkJ
OAFIaONqeoFdnuO9CD6qyK9x63HFEpY2BSlNnQxaWjijWkvHJvZAYkshc3J3LCJB
AFwExK6m4LRmWgMRTv1w7hf1EC4fW60bkhRX5csEU27yZ8I3zfGIdZioL7SGc26U
NzD9rJ28PJ/JgUz7tBhrdnKfwq76sSrLpAj8DG7K9Io+s+Fmf51U5ikuPMBJA3Yc
QoHXwIBtAgMBAAECggEAGgkSZvSJyFecVEj9q7QMoz6I+W3fmrK1ZMsFK7S7L6VG
WWskqECn3ueee4CfuEn6j4dHEcd3vtdTdRJ5jA1b6qbQWoFu3fiszmodF3m4G/ao
4GJ/tmhifP8VA5DaJGPaHP9OrrIhVJ7KQrSoIGsdA4lK5jGfqltOVpxy0BzzoYud
eq+xR/4CgsJyybztxcCHwSVtKhqDHlvz9J+zZAYRXvor/y9iar5awRoL6V3scxif
eKaR0TSk8bTeeZz30UWV1kUJWDBSweoLnXSwIjQjfGWU7ptHNph3v75rL/gWw5Ou
qoS7a74eCYIe6D8CDDuLP26dAwyax1PS8UgEYZ7EtQKBgQD8gSLX/pSdLvcjuraM
+QCHS9CCreO2N4KghQ8sVY4ouDdqyhOcWUJyxFkiu+JPD+3AnlHAt6hC9H/2Oww7
e2s6P2mPorPuSNakM/MVSUhevGA6TXVCFRLsUzbtrB4OE0oN9XzXbTzRY97zgK9f
hmXJImXoR6epZNseEjiMOg0sewKBgQDAUY2JEkMTl0fxhwAkKUy5/FzH+yB6VqCl
jJgTqK66YhvtGr3U8R5JZtwi+cZAtPPBl4TYfBx011Z4DEUzguJp/c08BAqeMLm/
fW3fAIPYhv0ApP7QTgjmawF6Wn2WsjnwdhahpjftjrJOwX3+7EPZ3I4Sk7ePR7HF
UtdlKX42NwKBgQDTWyCYXc919p8FuD8fpznLBinliLpnhvV/eYEm4gJZkUFJ0RYz
M//L4xCdY1leRn4DUkIqJ1DfopsNt4VYsMkje3rXsSAdX7jSv21Erw+1xMZjZvy0
sMEjMdBzhzOtInZFUuwJwrU6q/cuKdQiCHRgtLtKf9gWkYZcGHJe5iSqywKBgCHy
Qzler9hVa62GVtALOi/aC8aA3Uq638BZAL73l1/u0V8YyUk9BkuOjGzgCc6CIkSZ
qilMPvmgyPKHt+9PuwdadU+Spw0lLKRQT4R9Yshli2MBvLioDYoeeTRPpLtk2jVH
otcFr/mOpoqgPM0yhwd9ltZQnKX90bMy3DJPEKghAoGBAMdFCUm9W8WsMuJ7sg5b
9qPIvCdFCnrPu1+p80s90Evx1xvjGymnxeK+dDOryUFuUALKLbOSAdKzTWq6HQh2
EHT+Lv9CN/dXxqDpH+MfmlBXgMKz61XYxbLt4phAnOpNBQ7kjwMR4kP1q5O3Ypuf
4mOhgEotKCPhhJ/1k4OX8Hkx
-----END PRIVATE KEY-----
";

    /// Public half of `RSA_PRIVATE_PEM` (`openssl pkey -pubout`).
    const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvbFKmFiW3Uood686gW3l
DnZ1MsTNuhxKx4Sm9/Fllds6rSNDsJOKng3B3+2mQyhaNHniQrnjjGzImWYaxIPw
3ATAxTk3OXK+1Bysg64i8K6KzUtk3Ej/Yn0ckGdNazWpcrTw8dJLKAwJCTgBSGjj
anqBXZ7jvQg+qsivcetxxRKWNgUpTZ0MWlo4o1pLxyb2QGJLIXNydywiQQBcBMSu
puC0ZloDEU79cO4X9RAuH1utG5IUV+XLBFNu8mfCN83xiHWYqC+0hnNulDcw/ayd
vDyfyYFM+7QYa3Zyn8Ku+rEqy6QI/AxuyvSKPrPhZn+dVOYpLjzASQN2HEKB18CA
bQIDAQAB
-----END PUBLIC KEY-----
";

    /// P-256 key pair generated once with `openssl genpkey -algorithm EC`.
    const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQguMmxeig8b74xM8gB
C+yyALABSJw8LuvNyH3m3LlB51ihRANCAASHCBliEFDZ11olOwpgKvdP6mzMPy4+
UYQdnOtALi3LptGBZvYH7LFF91fJ5hggEI4nOWlVcZ6/sMWnFFf+hj7z
-----END PRIVATE KEY-----
";

    /// Public half of `EC_PRIVATE_PEM`.
    const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEhwgZYhBQ2ddaJTsKYCr3T+pszD8u
PlGEHZzrQC4ty6bRgWb2B+yxRfdXyeYYIBCOJzlpVXGev7DFpxRX/oY+8w==
-----END PUBLIC KEY-----
";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
        jsonwebtoken::encode(&Header::new(algorithm), &claims, key).unwrap()
    }

    fn hs256(claims: Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
    }

    fn verify(claims: Value) -> Result<Identity, AuthError> {
        Verifier::hs256(SECRET).verify(&hs256(claims))
    }

    fn identity(user_id: &str, username: &str) -> Identity {
        Identity {
            user_id: user_id.into(),
            username: username.into(),
            admin: false,
        }
    }

    #[test]
    fn admin_comes_from_role_or_roles() {
        let admin = |claims: Value| verify(claims).unwrap().admin;
        assert!(admin(json!({"sub": "a", "role": "admin"})));
        assert!(admin(json!({"sub": "a", "roles": ["reader", "admin"]})));
        assert!(admin(
            json!({"sub": "a", "role": "user", "roles": ["admin"]})
        ));
        assert!(!admin(json!({"sub": "a"})));
        assert!(!admin(json!({"sub": "a", "role": "Admin"})));
        assert!(!admin(json!({"sub": "a", "role": ["admin"]})));
        assert!(!admin(json!({"sub": "a", "roles": "admin"})));
        assert!(!admin(json!({"sub": "a", "roles": [["admin"]], "role": 1})));
        assert!(!admin(json!({"sub": "a", "roles": [], "role": null})));
        // The identity is otherwise the same.
        let id = verify(json!({"sub": "a", "username": "Ann", "role": "admin"})).unwrap();
        assert_eq!((&*id.user_id, &*id.username), ("a", "Ann"));
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    #[test]
    fn accepts_valid_token_with_sub() {
        assert_eq!(
            verify(json!({"sub": "user-456", "username": "john_doe", "exp": now() + 60})),
            Ok(identity("user-456", "john_doe"))
        );
    }

    /// Signs raw claims bytes, so a test can hold number forms `json!` would rewrite.
    fn hs256_raw(claims: &[u8]) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let key = EncodingKey::from_secret(SECRET);
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{signature}")
    }

    /// Found by the `token` fuzz target (the exact claims): jsonwebtoken reads `exp` and `nbf`
    /// as u64 and silently skips any other number, so an `nbf` past u64 or a fractional `exp`
    /// long past was accepted.
    #[test]
    fn exp_and_nbf_that_are_not_u64_are_still_checked() {
        let v = Verifier::hs256(SECRET);
        let fuzzed = br#"{"userId":12345,"n9me":"Num","nbf":170000000011111111111111111111111111111111111111111,"aud":"chat"}"#;
        assert_eq!(
            v.verify(&hs256_raw(fuzzed)),
            Err(AuthError::Invalid("token not yet valid".to_owned()))
        );
        let expired = br#"{"sub":"u","exp":1700000000.5}"#;
        assert_eq!(v.verify(&hs256_raw(expired)), Err(AuthError::Expired));
        let future_nbf = format!(r#"{{"sub":"u","nbf":{}.5}}"#, now() + 3600);
        assert_eq!(
            v.verify(&hs256_raw(future_nbf.as_bytes())),
            Err(AuthError::Invalid("token not yet valid".to_owned()))
        );
        // Fractional times on the right side of the clock are fine.
        let fresh = format!(r#"{{"sub":"u","exp":{}.5,"nbf":1.5}}"#, now() + 3600);
        assert_eq!(
            v.verify(&hs256_raw(fresh.as_bytes())),
            Ok(identity("u", "u"))
        );
        let far = br#"{"sub":"u","exp":1e300}"#;
        assert_eq!(v.verify(&hs256_raw(far)), Ok(identity("u", "u")));
    }

    #[test]
    fn verify_at_gives_exp_and_judges_at_the_given_time() {
        let v = Verifier::hs256(SECRET);
        let at = |secs: u64| UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let token = hs256(json!({"sub": "u", "exp": 2_000_000_000u64}));
        assert_eq!(
            v.verify_at(&token, at(1_999_999_000)),
            Ok(Verified {
                identity: identity("u", "u"),
                exp: Some(2_000_000_000)
            })
        );
        // Past exp, within the leeway, then beyond it.
        assert!(v.verify_at(&token, at(2_000_000_000 + LEEWAY_SECS)).is_ok());
        assert_eq!(
            v.verify_at(&token, at(2_000_000_001 + LEEWAY_SECS)),
            Err(AuthError::Expired)
        );
        let nbf = hs256(json!({"sub": "u", "nbf": 2_000_000_000u64}));
        assert!(v.verify_at(&nbf, at(1_000_000_000)).is_err());
        assert_eq!(v.verify_at(&nbf, at(2_000_000_000)).unwrap().exp, None);
        // A fraction is cut off; a value past u64 saturates.
        let fraction = hs256_raw(br#"{"sub":"u","exp":2000000000.9}"#);
        assert_eq!(
            v.verify_at(&fraction, at(1_000_000_000)).unwrap().exp,
            Some(2_000_000_000)
        );
        let far = hs256_raw(br#"{"sub":"u","exp":1e300}"#);
        assert_eq!(
            v.verify_at(&far, at(1_000_000_000)).unwrap().exp,
            Some(u64::MAX)
        );
        let none = hs256(json!({"sub": "u", "exp": null}));
        assert_eq!(v.verify_at(&none, at(1_000_000_000)).unwrap().exp, None);
    }

    #[test]
    fn token_without_exp_is_accepted() {
        assert_eq!(
            verify(json!({"sub": "user-1"})),
            Ok(identity("user-1", "user-1"))
        );
    }

    #[test]
    fn user_id_falls_back_to_user_id_claim() {
        assert_eq!(
            verify(json!({"userId": "u-9", "name": "Nine"})),
            Ok(identity("u-9", "Nine"))
        );
        assert_eq!(
            verify(json!({"sub": null, "userId": "u-9"})),
            Ok(identity("u-9", "u-9"))
        );
        // `sub` wins when both are present.
        assert_eq!(
            verify(json!({"sub": "s", "userId": "u"})),
            Ok(identity("s", "s"))
        );
    }

    #[test]
    fn numeric_user_ids_print_as_decimal() {
        assert_eq!(verify(json!({"userId": 42})), Ok(identity("42", "42")));
        assert_eq!(
            verify(json!({"sub": 18_446_744_073_709_551_615u64})),
            Ok(identity("18446744073709551615", "18446744073709551615"))
        );
        assert_eq!(
            verify(json!({"userId": 1.5})),
            Err(AuthError::Invalid(
                "userId claim must be a string or an integer".to_owned()
            ))
        );
        assert_eq!(
            verify(json!({"sub": true})),
            Err(AuthError::Invalid(
                "sub claim must be a string or an integer".to_owned()
            ))
        );
    }

    #[test]
    fn display_name_fallbacks() {
        let all = json!({"sub": "u", "username": "a", "name": "b", "preferred_username": "c"});
        assert_eq!(verify(all), Ok(identity("u", "a")));
        assert_eq!(
            verify(json!({"sub": "u", "name": "b", "preferred_username": "c"})),
            Ok(identity("u", "b"))
        );
        assert_eq!(
            verify(json!({"sub": "u", "preferred_username": "c"})),
            Ok(identity("u", "c"))
        );
        assert_eq!(verify(json!({"sub": "u"})), Ok(identity("u", "u")));
        // Empty or non-string names are skipped, not shown.
        assert_eq!(
            verify(json!({"sub": "u", "username": "", "name": 7, "preferred_username": "c"})),
            Ok(identity("u", "c"))
        );
    }

    #[test]
    fn display_names_are_capped_and_stripped() {
        let long = "n".repeat(200);
        let id = verify(json!({"sub": "u", "username": long})).unwrap();
        assert_eq!(id.username.chars().count(), MAX_USERNAME_CHARS);
        // The cap counts characters, not bytes.
        let wide = "\u{00e9}".repeat(100);
        let id = verify(json!({"sub": "u", "username": wide})).unwrap();
        assert_eq!(&*id.username, "\u{00e9}".repeat(64).as_str());
        let tricky = "a\u{202E}b\u{2066}c\u{200F}d\u{061C}e\nf\u{0007}g\u{200E}h\u{2069}i";
        let id = verify(json!({"sub": "u", "username": tricky})).unwrap();
        assert_eq!(&*id.username, "abcdefghi");
        // Stripping happens before the cap: 64 visible characters survive.
        let padded = format!("{}{}", "\u{202A}".repeat(10), "x".repeat(70));
        assert_eq!(display_name(&padded), "x".repeat(64));
        // Nothing left: the user id.
        let id = verify(json!({"sub": "u-9", "username": "\u{202E}\u{200F}\t"})).unwrap();
        assert_eq!(id, identity("u-9", "u-9"));
    }

    #[test]
    fn refuses_bad_signature() {
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"other-secret"),
            json!({"sub": "u"}),
        );
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token),
            Err(AuthError::BadSignature)
        );
        // Claims altered after signing.
        let good = hs256(json!({"sub": "u"}));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&json!({"sub": "admin"})),
            parts[2]
        );
        assert_eq!(
            Verifier::hs256(SECRET).verify(&forged),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn refuses_expired_tokens_beyond_the_leeway() {
        assert_eq!(
            verify(json!({"sub": "u", "exp": now() - 60})),
            Err(AuthError::Expired)
        );
        assert_eq!(AuthError::Expired.to_string(), "token expired");
        // Within the leeway the token still passes.
        assert_eq!(
            verify(json!({"sub": "u", "exp": now() - 2})),
            Ok(identity("u", "u"))
        );
    }

    #[test]
    fn refuses_tokens_not_yet_valid() {
        assert_eq!(
            verify(json!({"sub": "u", "nbf": now() + 3600})),
            Err(AuthError::Invalid("token not yet valid".to_owned()))
        );
        assert_eq!(
            verify(json!({"sub": "u", "nbf": now() - 10})),
            Ok(identity("u", "u"))
        );
    }

    #[test]
    fn refuses_unreadable_time_claims() {
        // jsonwebtoken alone would skip these checks and accept the token.
        assert_eq!(
            verify(json!({"sub": "u", "exp": "soon"})),
            Err(AuthError::Invalid(
                "exp claim must be a non-negative number".to_owned()
            ))
        );
        assert_eq!(
            verify(json!({"sub": "u", "nbf": -1})),
            Err(AuthError::Invalid(
                "nbf claim must be a non-negative number".to_owned()
            ))
        );
    }

    #[test]
    fn refuses_other_algorithms() {
        let hs512 = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET),
            json!({"sub": "u"}),
        );
        assert_eq!(
            Verifier::hs256(SECRET).verify(&hs512),
            Err(AuthError::WrongAlgorithm)
        );
        let hs384 = sign(
            Algorithm::HS384,
            &EncodingKey::from_secret(SECRET),
            json!({"sub": "u"}),
        );
        assert_eq!(
            Verifier::hs256(SECRET).verify(&hs384),
            Err(AuthError::WrongAlgorithm)
        );
        let rs256 = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap(),
            json!({"sub": "u"}),
        );
        assert_eq!(
            Verifier::hs256(SECRET).verify(&rs256),
            Err(AuthError::WrongAlgorithm)
        );
    }

    #[test]
    fn refuses_alg_none() {
        let header = b64(&json!({"alg": "none", "typ": "JWT"}));
        let payload = b64(&json!({"sub": "mallory"}));
        let token = format!("{header}.{payload}.");
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token),
            Err(AuthError::WrongAlgorithm)
        );
        let upper = format!("{}.{payload}.", b64(&json!({"alg": "NONE"})));
        assert_eq!(
            Verifier::hs256(SECRET).verify(&upper),
            Err(AuthError::WrongAlgorithm)
        );
    }

    #[test]
    fn refuses_missing_and_garbage_tokens() {
        let v = Verifier::hs256(SECRET);
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert_eq!(AuthError::Missing.to_string(), "missing token");
        for garbage in [
            "garbage",
            "a.b.c",
            "a.b",
            "...",
            "a.b.c.d",
            "eyJhbGciOiJIUzI1NiJ9",
        ] {
            assert_eq!(v.verify(garbage), Err(AuthError::Malformed), "{garbage}");
        }
        // The signature is checked before the payload is read, so a junk payload under a junk
        // signature is a bad signature.
        assert_eq!(
            v.verify("eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.x"),
            Err(AuthError::BadSignature)
        );
        // A correctly signed payload that is not JSON is malformed.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        let payload = URL_SAFE_NO_PAD.encode(b"not json");
        let message = format!("{header}.{payload}");
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(
            v.verify(&format!("{message}.{signature}")),
            Err(AuthError::Malformed)
        );
        // A header without `alg` is not a JWT either.
        let no_alg = format!("{}.{}.x", b64(&json!({"typ": "JWT"})), b64(&json!({})));
        assert_eq!(v.verify(&no_alg), Err(AuthError::Malformed));
    }

    #[test]
    fn refuses_missing_subject() {
        assert_eq!(verify(json!({"name": "n"})), Err(AuthError::MissingSubject));
        assert_eq!(verify(json!({"sub": ""})), Err(AuthError::MissingSubject));
        assert_eq!(
            verify(json!({"sub": null, "userId": ""})),
            Err(AuthError::MissingSubject)
        );
        assert_eq!(
            AuthError::MissingSubject.to_string(),
            "token has no subject"
        );
    }

    #[test]
    fn refuses_overlong_user_ids() {
        let max = "u".repeat(MAX_USER_ID_LEN);
        assert_eq!(verify(json!({"sub": max})), Ok(identity(&max, &max)));
        assert_eq!(
            verify(json!({"sub": "u".repeat(MAX_USER_ID_LEN + 1)})),
            Err(AuthError::Invalid(
                "user id longer than 128 bytes".to_owned()
            ))
        );
    }

    #[test]
    fn tokens_with_an_audience_are_accepted() {
        assert_eq!(
            verify(json!({"sub": "u", "aud": "another-service"})),
            Ok(identity("u", "u"))
        );
    }

    #[test]
    fn rs256_verifier_accepts_rs256_and_refuses_hs256() {
        let v = Verifier::with_public_key_pem(RSA_PUBLIC_PEM.as_bytes()).unwrap();
        assert_eq!(v.algorithm(), Algorithm::RS256);
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
        let token = sign(
            Algorithm::RS256,
            &key,
            json!({"sub": "rsa-user", "preferred_username": "Ria", "exp": now() + 60}),
        );
        assert_eq!(v.verify(&token), Ok(identity("rsa-user", "Ria")));
        assert_eq!(
            v.verify(&hs256(json!({"sub": "u"}))),
            Err(AuthError::WrongAlgorithm)
        );
        // The classic confusion attack: HS256 keyed with the public key's PEM text.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
            json!({"sub": "admin"}),
        );
        assert_eq!(v.verify(&confused), Err(AuthError::WrongAlgorithm));
        // RS512 with the same key is not the configured algorithm either.
        let rs512 = sign(Algorithm::RS512, &key, json!({"sub": "u"}));
        assert_eq!(v.verify(&rs512), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn es256_verifier_accepts_es256() {
        let v = Verifier::with_public_key_pem(EC_PUBLIC_PEM.as_bytes()).unwrap();
        assert_eq!(v.algorithm(), Algorithm::ES256);
        let key = EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap();
        let token = sign(Algorithm::ES256, &key, json!({"userId": 7}));
        assert_eq!(v.verify(&token), Ok(identity("7", "7")));
        // Signed by a different key of the right type.
        let rsa_token = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap(),
            json!({"sub": "u"}),
        );
        assert_eq!(v.verify(&rsa_token), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn public_key_loading_refuses_other_input() {
        assert_eq!(
            Verifier::with_public_key_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap_err(),
            AuthError::Invalid("expected a public key, got a private key".to_owned())
        );
        assert_eq!(
            Verifier::with_public_key_pem(b"not a key").unwrap_err(),
            AuthError::Invalid("public key is not an RSA or EC public key in PEM form".to_owned())
        );
    }

    #[test]
    fn minted_tokens_verify() {
        let v = Verifier::hs256(SECRET);
        let token = mint_hs256(SECRET, "user-1", Some("Alice"), Some(3600));
        assert_eq!(v.verify(&token), Ok(identity("user-1", "Alice")));
        let token = mint_hs256(SECRET, "user-2", None, None);
        assert_eq!(v.verify(&token), Ok(identity("user-2", "user-2")));
        assert_eq!(
            Verifier::hs256(b"wrong").verify(&token),
            Err(AuthError::BadSignature)
        );
        // The ttl lands in `exp`, and no ttl means no `exp`.
        let claims = |token: &str| -> Value {
            let payload = token.split('.').nth(1).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
        };
        let with_ttl = claims(&mint_hs256(SECRET, "u", None, Some(100)));
        assert_eq!(
            with_ttl["exp"].as_u64().unwrap() - with_ttl["iat"].as_u64().unwrap(),
            100
        );
        assert!(claims(&mint_hs256(SECRET, "u", None, None))
            .get("exp")
            .is_none());
    }

    #[test]
    fn debug_output_hides_the_key() {
        let shown = format!("{:?}", Verifier::hs256(b"super-secret-value"));
        assert_eq!(shown, "Verifier { algorithm: HS256, .. }");
    }
}
