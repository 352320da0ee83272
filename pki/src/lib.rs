//! The fleet's mutual TLS: its public key infrastructure and dialing the
//! coordinator.
//!
//! One fleet CA signs everything: the coordinator's server certificate and
//! every client certificate. A client certificate names its holder in the
//! Subject CommonName and its role in the Subject Organization
//! (`k3sfleet:agent`, `k3sfleet:admin`, `k3sfleet:reader`), the way Talos
//! carries roles, and has the ClientAuth extended key usage.

mod dial;
mod enroll;
mod files;
mod fingerprint;
mod identity;
mod issue;
mod pinned;
mod reloading;
mod role;
mod tls;

pub use dial::{DialError, DialTarget, dial};
pub use enroll::{EnrollError, Enrollment, Renewal, enroll, install, renew};
pub use files::{
    FileError, read_certificates, read_private_key, write_private_file, write_public_file,
};
pub use fingerprint::{Fingerprint, FingerprintError};
pub use identity::{IdentityError, PeerIdentity};
pub use issue::{CERT_BACKDATE, csr_for_key, generate_key_and_csr, validate_name};
pub use issue::{ClientCertRequest, FleetCa, IssueError, IssuedCert, ServerCertRequest};
pub use pinned::{PinnedCaVerifier, pinned_client_config};
pub use reloading::ReloadingCertificate;
pub use role::{K3sRole, K3sRoleError, Role, RoleError};
pub use tls::{
    CERT_RELOAD_INTERVAL, FixedClientCert, TlsError, TlsFiles, certified_key, client_config,
    client_verifier, metrics_server_config, metrics_tls, platform_client_config, root_store,
    server_config,
};
