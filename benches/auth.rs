//! JWT verification on the accepting core: a valid HS256 token and the refusal paths
//! (bad signature, `alg: none`, expired).
//!
//! Every token is checked once before the benchmark runs, so each arm measures the outcome its
//! name says.
//!
//! Run with `cargo bench --bench auth`.

use std::hint::black_box;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chatd::auth::{self, AuthError, Verifier};
use criterion::{criterion_group, criterion_main, Criterion};

const SECRET: &[u8] = b"bench-secret-of-a-realistic-length-0123456789";

/// A token whose header says `alg: none`, with the claims of `valid` and an empty signature.
fn alg_none(valid: &str) -> String {
    let claims = valid.split('.').nth(1).expect("a JWT has three parts");
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{claims}.")
}

fn verify(c: &mut Criterion) {
    let verifier = Verifier::hs256(SECRET);
    let valid = auth::mint_hs256(SECRET, "user-456", Some("john_doe"), Some(3600));
    let bad_signature = auth::mint_hs256(
        b"some-other-secret-of-the-same-length-0123456",
        "user-456",
        Some("john_doe"),
        Some(3600),
    );
    let none = alg_none(&valid);
    // mint_hs256 only sets a future `exp`; an expired token is signed directly.
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "user-456", "username": "john_doe", "iat": 1_000, "exp": 2_000}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("HS256 signing cannot fail");

    let identity = verifier.verify(&valid).expect("the valid token verifies");
    assert_eq!(&*identity.user_id, "user-456");
    assert_eq!(
        verifier.verify(&bad_signature),
        Err(AuthError::BadSignature)
    );
    assert_eq!(verifier.verify(&none), Err(AuthError::WrongAlgorithm));
    assert_eq!(verifier.verify(&expired), Err(AuthError::Expired));

    let mut group = c.benchmark_group("jwt_verify_hs256");
    group.bench_function("valid", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&valid))))
    });
    group.bench_function("bad_signature", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&bad_signature))))
    });
    group.bench_function("alg_none", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&none))))
    });
    group.bench_function("expired", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&expired))))
    });
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
