//! Token checking (`chatd::auth::Verifier::verify`, HS256 with a fixed
//! secret) on untrusted token text, including the header pre-check that runs
//! before the signature, and `chatd::http::bearer_token` that extracts the
//! token from an `Authorization` header.
//!
//! Input layout: byte 0 picks the mode, the rest is its input.
//! - even: the rest is token text (or an `Authorization` value) as a client
//!   sends it; random text almost never carries a valid signature, so this
//!   mode exercises the pre-check and the refusals.
//! - odd: the rest is `header JSON 0xFF claims JSON`, which the target
//!   base64-encodes and signs with the secret, so the fuzzer reaches the
//!   claims checks behind a valid signature.
//!
//! Invariants checked beyond "no panic":
//! - an accepted token names a user id of 1 to `MAX_USER_ID_LEN` bytes and a
//!   non-empty display name, and its header's `alg` is exactly `HS256`
//!   (never `none`, never another algorithm);
//! - an accepted token is not expired (`exp`) and not before its time
//!   (`nbf`), allowing `LEEWAY_SECS` (contract section 2: "`exp` is checked
//!   when present");
//! - the user id is the `sub` claim (a string, or an integer in decimal),
//!   else `userId`;
//! - an accepted token with a corrupted signature, or signed with another
//!   secret, is refused.
#![no_main]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chatd::auth::{AuthError, Identity, Verifier, LEEWAY_SECS, MAX_USER_ID_LEN};
use chatd::http::bearer_token;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

/// The secret every token is checked against.
const SECRET: &[u8] = b"fuzz-secret";

/// The user id a claim gives, as the contract reads it.
fn claim_user_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// The header field checked on an accepted token. Read through a struct, as
/// the server does, because serde_json skips unknown fields without checking
/// their strings (a lone surrogate or invalid UTF-8 there is accepted).
#[derive(Deserialize)]
struct HeaderFields {
    /// The algorithm the token claims.
    alg: Value,
}

/// The claims checked on an accepted token (unknown ones skipped as above).
#[derive(Deserialize)]
struct ClaimFields {
    /// Standard subject.
    #[serde(default)]
    sub: Option<Value>,
    /// User id of issuers that do not set `sub`.
    #[serde(rename = "userId", default)]
    user_id: Option<Value>,
    /// Expiry, Unix seconds.
    #[serde(default)]
    exp: Option<Value>,
    /// Not-before, Unix seconds.
    #[serde(default)]
    nbf: Option<Value>,
}

/// Checks what an accepted token says against its own claims.
fn check_accepted(identity: &Identity, header: &[u8], claims: &[u8]) {
    assert!(!identity.user_id.is_empty() && identity.user_id.len() <= MAX_USER_ID_LEN);
    assert!(!identity.username.is_empty());
    let header: HeaderFields = serde_json::from_slice(header).expect("accepted header is JSON");
    assert_eq!(
        header.alg, "HS256",
        "accepted a token whose alg is not HS256"
    );
    let claims: ClaimFields = serde_json::from_slice(claims).expect("accepted claims are JSON");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let leeway = LEEWAY_SECS as f64;
    if let Some(exp) = claims.exp.as_ref().and_then(Value::as_f64) {
        assert!(
            exp + leeway >= now,
            "accepted a token that expired at {exp}"
        );
    }
    if let Some(nbf) = claims.nbf.as_ref().and_then(Value::as_f64) {
        assert!(
            nbf <= now + leeway,
            "accepted a token not valid before {nbf}"
        );
    }
    let expected = match &claims.sub {
        Some(sub) if !sub.is_null() => claim_user_id(sub),
        _ => claims.user_id.as_ref().and_then(claim_user_id),
    };
    assert_eq!(expected.as_deref(), Some(&*identity.user_id));
}

/// `header.claims.signature` signed with `secret`.
fn signed(header: &[u8], claims: &[u8], secret: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("HMAC signing cannot fail");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let verifier = Verifier::hs256(SECRET);
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let direct = verifier.verify(text);
        if text.is_empty() {
            assert_eq!(direct, Err(AuthError::Missing));
        }
        if let Ok(identity) = &direct {
            // Only possible with a signature made with the secret.
            let (message, _) = text.rsplit_once('.').expect("three parts");
            let (header, claims) = message.split_once('.').expect("three parts");
            let header = URL_SAFE_NO_PAD.decode(header).expect("header is base64");
            let claims = URL_SAFE_NO_PAD.decode(claims).expect("claims are base64");
            check_accepted(identity, &header, &claims);
        }
        // The same text as an Authorization header value.
        if let Some(token) = bearer_token(text) {
            let _ = verifier.verify(token);
        }
        return;
    }

    let (header, claims) = match rest.iter().position(|&b| b == 0xFF) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b"{\"sub\":\"u\"}"[..]),
    };
    let token = signed(header, claims, SECRET);
    match verifier.verify(&token) {
        Ok(identity) => check_accepted(&identity, header, claims),
        Err(AuthError::Missing) => panic!("a non-empty token reported missing"),
        // Refused before its signature mattered: a forgery of it is too.
        Err(_) => return,
    }
    // What was accepted must be held to its signature.
    let forged = signed(header, claims, b"another-secret");
    assert!(
        verifier.verify(&forged).is_err(),
        "accepted another secret's token"
    );
    let (message, signature) = token.rsplit_once('.').expect("three parts");
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let corrupted = format!("{message}.{flipped}{}", &signature[1..]);
    assert!(
        verifier.verify(&corrupted).is_err(),
        "accepted a corrupted signature"
    );
});
