//! The coordinator's HTTPS client (Prometheus queries): rustls with ring and
//! the host's root certificates.

use std::sync::OnceLock;

/// One client for the process: it pools connections.
pub fn client() -> Result<reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let tls =
                k3sfleet_pki::platform_client_config(Vec::new()).map_err(|err| err.to_string())?;
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .user_agent(concat!("k3sfleet-coordinator/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|err| err.to_string())
        })
        .clone()
}
