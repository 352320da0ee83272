//! A server certificate read from disk again whenever its files change, so
//! a renewed certificate is served without a restart (the coordinator's gRPC
//! port, either daemon's `/metrics`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::TlsError;

/// Serves the certificate currently on disk.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    loaded_stamp: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
}

impl ReloadingCertificate {
    pub fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<Arc<Self>, TlsError> {
        let key = crate::certified_key(&cert_path, &key_path)?;
        let stamp = modification_stamp(&cert_path, &key_path);
        Ok(Arc::new(ReloadingCertificate {
            cert_path,
            key_path,
            current: ArcSwap::new(key),
            loaded_stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// Loads the files again if they changed since the last load. A pair that
    /// does not load (half-copied, mismatched) is reported and the old
    /// certificate stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = modification_stamp(&self.cert_path, &self.key_path);
        let mut loaded = self.loaded_stamp.lock().unwrap_or_else(|p| p.into_inner());
        if stamp == *loaded {
            return Ok(false);
        }
        let key = crate::certified_key(&self.cert_path, &self.key_path)?;
        self.current.store(key);
        *loaded = stamp;
        Ok(true)
    }

    /// Checks the files every `every` for as long as the task runs.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                match this.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %this.cert_path.display(), "server certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(err) => tracing::warn!(
                        error = %err,
                        "the server certificate files changed but do not load; keeping the previous certificate"
                    ),
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modification_stamp(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}
