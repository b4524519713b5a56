//! TLS to the backends: rustls with the ring provider for Postgres
//! (`sslmode` in DATABASE_URL) and Redis (`rediss://` in REDIS_URL).
//!
//! Trust: BACKEND_CA_FILE (PEM) when set, and then only it, for both
//! backends (as libpq's `sslrootcert`); otherwise the system's root
//! certificates, read from disk at start (`rustls-native-certs`). Nothing is
//! downloaded.
//!
//! Postgres `sslmode`, as libpq means it (tokio-postgres itself knows only
//! disable, prefer and require, so the two verifying modes are read here and
//! handed to it as `require` with a verifier of ours):
//!
//! | sslmode | TLS | certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it, else plain | no (encryption only) |
//! | `require` | always | no; with BACKEND_CA_FILE set, chain as `verify-ca` (libpq does the same with a root file) |
//! | `verify-ca` | always | chain to a trusted root, any host name |
//! | `verify-full` | always | chain and host name (DNS or IP SAN) |

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

/// Why TLS to a backend cannot be set up; each message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// BACKEND_CA_FILE cannot be read.
    #[error("BACKEND_CA_FILE: cannot read {path}: {reason}")]
    Unreadable {
        /// The file named.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// BACKEND_CA_FILE is not a PEM file of CA certificates.
    #[error("BACKEND_CA_FILE: {path} {reason}")]
    Invalid {
        /// The file named.
        path: String,
        /// What is wrong with its contents.
        reason: String,
    },
    /// A verifying mode was asked for and there is nothing to trust.
    #[error("{0}: certificates are to be verified, but BACKEND_CA_FILE is not set and no system root certificate was found")]
    NoRoots(&'static str),
    /// rustls refused the configuration.
    #[error("{0}: TLS set-up failed: {1}")]
    Rustls(&'static str, String),
}

/// Postgres `sslmode` values (libpq's meanings; see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, certificate unchecked.
    Prefer,
    /// TLS, certificate unchecked (checked as `VerifyCa` when BACKEND_CA_FILE is set).
    Require,
    /// TLS, chain verified, host name not.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl PgSslMode {
    /// The name used in DATABASE_URL.
    pub fn as_str(self) -> &'static str {
        match self {
            PgSslMode::Disable => "disable",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }
}

/// Reads `sslmode=verify-ca|verify-full` out of a DATABASE_URL (either form:
/// URL query or `key=value` pairs) and rewrites it to `require`, which
/// tokio-postgres understands. Returns the rewritten string and the last
/// verifying mode found (None when there is none).
pub fn split_verify_mode(url: &str) -> (String, Option<PgSslMode>) {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"\bsslmode\s*=\s*'?(verify-ca|verify-full)'?($|[&\s#])")
            .expect("sslmode pattern")
    });
    let mut found = None;
    for caps in re.captures_iter(url) {
        found = Some(match &caps[1] {
            "verify-ca" => PgSslMode::VerifyCa,
            _ => PgSslMode::VerifyFull,
        });
    }
    if found.is_none() {
        return (url.to_string(), None);
    }
    (re.replace_all(url, "sslmode=require$2").into_owned(), found)
}

/// A libpq TLS file option in DATABASE_URL, which tokio-postgres does not
/// take (its parse error would not say which): the CA comes from
/// BACKEND_CA_FILE, and client certificates are not supported.
pub fn unsupported_pg_option(url: &str) -> Option<&'static str> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"\b(sslrootcert|sslcert|sslkey|sslcrl|sslpassword)\s*=")
            .expect("option pattern")
    });
    let caps = re.captures(url)?;
    Some(match &caps[1] {
        "sslrootcert" => "sslrootcert",
        "sslcert" => "sslcert",
        "sslkey" => "sslkey",
        "sslcrl" => "sslcrl",
        _ => "sslpassword",
    })
}

/// The provider both backends use; also installed as the process default,
/// which the redis crate's rustls configuration takes.
pub fn provider() -> Arc<CryptoProvider> {
    // ring, though rustls 0.23.48 deprecates it for lacking post-quantum key
    // exchange: the build already has ring (jsonwebtoken), and aws-lc-rs would
    // add a large C build (and cmake where its prebuilt bindings do not fit).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Already installed (by an earlier call): the same provider; nothing to do.
    let _ = CryptoProvider::install_default((*provider).clone());
    provider
}

/// Reads BACKEND_CA_FILE: its PEM bytes (for the redis crate, which parses
/// them itself) after checking that it holds at least one certificate and
/// that every certificate is one rustls accepts as a trust anchor.
pub fn read_ca_file(path: &Path) -> Result<(Vec<u8>, RootCertStore), TlsError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| TlsError::Unreadable {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| TlsError::Invalid {
            path: shown.clone(),
            reason: format!("is not valid PEM: {e}"),
        })?;
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: shown.clone(),
            reason: format!("holds a certificate that is not a usable CA: {e}"),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Invalid {
            path: shown,
            reason: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok((pem, roots))
}

/// What both backends trust.
#[derive(Debug, Clone)]
pub struct Trust {
    /// BACKEND_CA_FILE's PEM bytes, when set (given to the redis crate).
    pub ca_pem: Option<Vec<u8>>,
    /// BACKEND_CA_FILE's certificates; None: the system's roots.
    ca_roots: Option<Arc<RootCertStore>>,
}

impl Trust {
    /// Loads BACKEND_CA_FILE when set.
    pub fn load(ca_file: Option<&Path>) -> Result<Trust, TlsError> {
        match ca_file {
            None => Ok(Trust {
                ca_pem: None,
                ca_roots: None,
            }),
            Some(path) => {
                let (pem, roots) = read_ca_file(path)?;
                Ok(Trust {
                    ca_pem: Some(pem),
                    ca_roots: Some(Arc::new(roots)),
                })
            }
        }
    }

    /// Whether a private CA was given.
    pub fn has_ca_file(&self) -> bool {
        self.ca_roots.is_some()
    }

    /// The roots to verify against: the CA file's, else the system's.
    fn roots(&self, variable: &'static str) -> Result<Arc<RootCertStore>, TlsError> {
        if let Some(roots) = &self.ca_roots {
            return Ok(roots.clone());
        }
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::warn!(error = %e, "a system root certificate could not be loaded");
        }
        let mut roots = RootCertStore::empty();
        let (_, _) = roots.add_parsable_certificates(loaded.certs);
        if roots.is_empty() {
            return Err(TlsError::NoRoots(variable));
        }
        Ok(Arc::new(roots))
    }

    /// The rustls client configuration for Postgres in `mode`.
    pub fn postgres_config(&self, mode: PgSslMode) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let effective = match mode {
            PgSslMode::Require if self.has_ca_file() => PgSslMode::VerifyCa,
            m => m,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match effective {
            PgSslMode::Disable | PgSslMode::Prefer | PgSslMode::Require => {
                Arc::new(EncryptOnly(provider.clone()))
            }
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    self.roots("DATABASE_URL")?,
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsError::Rustls("DATABASE_URL", e.to_string()))?;
                if effective == PgSslMode::VerifyCa {
                    Arc::new(AnyHostName(webpki))
                } else {
                    webpki
                }
            }
        };
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls("DATABASE_URL", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }
}

/// `prefer`/`require` without a CA: the handshake's signatures are checked
/// (the key exchange is authentic to the certificate presented), the
/// certificate itself is not, as libpq does in these modes.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full webpki check (chain, validity, usage), with a
/// certificate for another host name accepted. webpki checks the name
/// last, after the chain, so a name error means the chain was good.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_are_rewritten_to_require_in_both_forms() {
        let cases = [
            (
                "postgres://u@db:5432/app?sslmode=verify-full",
                "postgres://u@db:5432/app?sslmode=require",
                Some(PgSslMode::VerifyFull),
            ),
            (
                "postgres://u@db/app?sslmode=verify-ca&application_name=x",
                "postgres://u@db/app?sslmode=require&application_name=x",
                Some(PgSslMode::VerifyCa),
            ),
            (
                "host=db user=u sslmode=verify-full dbname=app",
                "host=db user=u sslmode=require dbname=app",
                Some(PgSslMode::VerifyFull),
            ),
            (
                "host=db sslmode = 'verify-ca'",
                "host=db sslmode=require",
                Some(PgSslMode::VerifyCa),
            ),
            (
                "postgres://u@db/app?sslmode=require",
                "postgres://u@db/app?sslmode=require",
                None,
            ),
            (
                "postgres://u@db/app?xsslmode=verify-full",
                "postgres://u@db/app?xsslmode=verify-full",
                None,
            ),
        ];
        for (input, want, mode) in cases {
            assert_eq!(
                split_verify_mode(input),
                (want.to_string(), mode),
                "{input}"
            );
        }
    }

    #[test]
    fn libpq_file_options_are_named() {
        assert_eq!(
            unsupported_pg_option("postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem"),
            Some("sslrootcert")
        );
        assert_eq!(
            unsupported_pg_option("host=h sslcert=/c.pem sslkey=/k.pem"),
            Some("sslcert")
        );
        assert_eq!(
            unsupported_pg_option("postgres://u@h/db?sslmode=require"),
            None
        );
    }

    #[test]
    fn a_bad_ca_file_is_refused_naming_the_variable() {
        let dir = std::env::temp_dir().join(format!("chatd-ca-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = Trust::load(Some(&missing)).unwrap_err().to_string();
        assert!(err.starts_with("BACKEND_CA_FILE: cannot read"), "{err}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Trust::load(Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let garbled = dir.join("garbled.pem");
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\nMIIB!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = Trust::load(Some(&garbled)).unwrap_err().to_string();
        assert!(err.starts_with("BACKEND_CA_FILE: "), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
