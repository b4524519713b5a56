//! `chatd`: parse settings, set up logging, run the server.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use rand::RngCore;

use chatd::auth::{self, Verifier};
use chatd::config::{Cli, Command, LogFormat, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.settings);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = cli.settings;
    if let Some(Command::Token { user, name, ttl }) = cli.command {
        let secret = settings
            .jwt_secret
            .context("JWT_SECRET: set it to the server's secret to mint a token")?;
        println!(
            "{}",
            auth::mint_hs256(secret.as_bytes(), &user, name.as_deref(), Some(ttl))
        );
        return Ok(());
    }
    let verifier = verifier(&mut settings)?;
    let dev_token = match (&settings.jwt_secret, settings.is_development()) {
        (Some(secret), true) => Some(auth::mint_hs256(
            secret.as_bytes(),
            "dev-user",
            Some("Dev User"),
            Some(86_400),
        )),
        _ => None,
    };
    chatd::runtime::server::run(settings, verifier, move |addr| {
        tracing::info!(%addr, "listening");
        println!("chatd listening on {addr}");
        if let Some(token) = dev_token {
            let port = addr.port();
            println!("development token (user dev-user, 24 h): {token}");
            println!("try: ws://127.0.0.1:{port}/ws?token={token}&roomId=lobby");
        }
    })
    .map_err(anyhow::Error::from)
}

/// The token verifier from JWT_PUBLIC_KEY or JWT_SECRET; in development
/// without either, a random secret (printed tokens use it).
fn verifier(settings: &mut Settings) -> anyhow::Result<Verifier> {
    if let Some(key) = &settings.jwt_public_key {
        let pem = if key.contains("-----BEGIN") {
            key.clone().into_bytes()
        } else {
            std::fs::read(key).with_context(|| format!("JWT_PUBLIC_KEY: cannot read {key}"))?
        };
        return Verifier::with_public_key_pem(&pem)
            .map_err(|e| anyhow::anyhow!("JWT_PUBLIC_KEY: {e}"));
    }
    if settings.jwt_secret.is_none() {
        if !settings.is_development() {
            anyhow::bail!("JWT_SECRET is required (set NODE_ENV=development to run with a random development secret)");
        }
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        tracing::warn!("JWT_SECRET not set: using a random development secret");
        settings.jwt_secret = Some(secret);
    }
    let secret = settings.jwt_secret.as_deref().unwrap_or_default();
    Ok(Verifier::hs256(secret.as_bytes()))
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
