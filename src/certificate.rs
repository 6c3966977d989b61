//! The server's TLS certificate (rustls, ring provider), loaded from PEM
//! files and reloadable. A setting like any other, so `config` can hold
//! one without depending on the server; `server::tls` watches it.
//!
//! `TlsReloader` holds the current `rustls::ServerConfig` behind a lock that
//! is held only to clone an `Arc`, so each new connection gets whatever
//! certificate is current and connections already open keep theirs. A
//! reload (on SIGHUP, or when the files' size or modification time change)
//! builds a complete new config first and swaps it in only if that worked:
//! a bad or half-written certificate is reported and the old one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("the certificate and key are not usable together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Size and modification time of the two files, to notice a change.
type Stamp = Option<[(u64, SystemTime); 2]>;

/// The server's certificate, reloadable while running. Cheap to clone.
#[derive(Clone)]
pub struct TlsReloader {
    inner: Arc<Inner>,
}

struct Inner {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
    stamp: Mutex<Stamp>,
    check_every: Duration,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("cert", &self.inner.cert_path)
            .field("key", &self.inner.key_path)
            .finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Loads the PEM certificate chain and private key; fails if they are
    /// missing, malformed or do not match. Looks for changed files every 10 s.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        Self::load_checking_every(cert_path, key_path, Duration::from_secs(10))
    }

    /// Like `load`, looking for changed files every `check_every`.
    pub fn load_checking_every(
        cert_path: &Path,
        key_path: &Path,
        check_every: Duration,
    ) -> Result<Self, TlsError> {
        let stamp = stamp(cert_path, key_path);
        let config = build(cert_path, key_path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
                current: RwLock::new(Arc::new(config)),
                stamp: Mutex::new(stamp),
                check_every,
            }),
        })
    }

    /// An acceptor with the certificate that is current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .inner
            .current
            .read()
            .expect("tls lock poisoned")
            .clone();
        TlsAcceptor::from(config)
    }

    pub fn check_every(&self) -> Duration {
        self.inner.check_every
    }

    /// Reads both files again and switches to them if they make a valid
    /// config; otherwise keeps the current one.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = stamp(&self.inner.cert_path, &self.inner.key_path);
        *self.inner.stamp.lock().expect("tls lock poisoned") = stamp;
        let config = build(&self.inner.cert_path, &self.inner.key_path)?;
        *self.inner.current.write().expect("tls lock poisoned") = Arc::new(config);
        Ok(())
    }

    /// Reloads if either file changed since the last attempt; `None` if
    /// nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamp(&self.inner.cert_path, &self.inner.key_path);
        let before = *self.inner.stamp.lock().expect("tls lock poisoned");
        (now != before).then(|| self.reload())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        let meta = std::fs::metadata(p).ok()?;
        Some((meta.len(), meta.modified().ok()?))
    };
    Some([one(cert)?, one(key)?])
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn build(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsError> {
    let cert_pem = read(cert_path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?)
        .map_err(|_| TlsError::NoKey(key_path.to_owned()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // HTTP/1.1 only: WebSocket upgrades need it, and the API gains nothing from h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
