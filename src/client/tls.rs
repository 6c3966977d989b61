//! TLS for the clients: one rustls config (ring) shared by the HTTP API and
//! the WebSocket link. By default it trusts the operating system's
//! certificate store; `--ca-cert FILE` (or `HUSH_CA_CERT`) trusts the PEM
//! certificates in FILE instead, and only them — for a server with a
//! self-signed certificate or a private CA.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls_platform_verifier::BuilderVerifierExt;

static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Sets the trust anchors for this process; call before the first
/// connection. Without a call, the system's store is used.
pub fn init(ca_cert: Option<&Path>) -> anyhow::Result<()> {
    let config = match ca_cert {
        Some(path) => trusting(path)?,
        None => system()?,
    };
    if CONFIG.set(Arc::new(config)).is_err() {
        bail!("client TLS was already set up");
    }
    Ok(())
}

/// The config every client connection uses.
pub fn config() -> Arc<ClientConfig> {
    CONFIG
        .get_or_init(|| Arc::new(system().expect("the system certificate store loads")))
        .clone()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn system() -> anyhow::Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()
        .context("loading the system's trusted certificates")?
        .with_no_client_auth())
}

/// A config that trusts exactly the certificates in the PEM file `path`.
pub fn trusting(path: &Path) -> anyhow::Result<ClientConfig> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a certificate in {} is not usable", path.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An HTTP client using `config()`. Use this rather than
/// `reqwest::Client::new()`: reqwest is built without a crypto provider of
/// its own (ring is ours; its default, aws-lc-rs, is a heavy C build), so
/// its plain constructor panics.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured((*config()).clone())
        .build()
        .expect("an HTTP client with a ready TLS config builds")
}
