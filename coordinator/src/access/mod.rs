//! Joining the fleet and leaving it: bootstrap tokens, certificates issued
//! against CSRs (the private key never leaves its host), renewal, and
//! revocation.

mod enroll;
mod revocations;
pub mod token;

pub use enroll::{Access, AccessError, CertPolicy, check_token};
pub use revocations::Revocations;

use k3sfleet_pki::Role;
use k3sfleet_proto::v1::CertRole;

/// The protocol's role enum as a PKI role.
pub fn role_from_proto(role: i32) -> Option<Role> {
    match CertRole::try_from(role).ok()? {
        CertRole::Agent => Some(Role::Agent),
        CertRole::Admin => Some(Role::Admin),
        CertRole::Reader => Some(Role::Reader),
        CertRole::Unspecified => None,
    }
}

pub fn role_to_proto(role: Role) -> CertRole {
    match role {
        Role::Agent => CertRole::Agent,
        Role::Admin => CertRole::Admin,
        Role::Reader => CertRole::Reader,
    }
}
