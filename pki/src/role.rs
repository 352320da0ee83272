//! The roles a client certificate can carry.

use std::fmt;
use std::str::FromStr;

/// Prefix of the Subject Organization that carries a role.
const ROLE_ORG_PREFIX: &str = "k3sfleet:";

/// What a client certificate's holder may do; the coordinator's authorization
/// table maps each RPC to the roles allowed to call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A host agent: reports about its own node and runs commands for it.
    Agent,
    /// An operator: may read and change anything.
    Admin,
    /// An observer: may list and show, never change.
    Reader,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {given:?}: expected agent, admin or reader")]
pub struct RoleError {
    pub given: String,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Agent, Role::Admin, Role::Reader];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }

    /// The Subject Organization value that carries this role.
    pub fn organization(self) -> String {
        format!("{ROLE_ORG_PREFIX}{}", self.as_str())
    }

    /// The role carried by a Subject Organization value, if it carries one.
    pub fn from_organization(org: &str) -> Option<Role> {
        org.strip_prefix(ROLE_ORG_PREFIX)?.parse().ok()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Role::Agent),
            "admin" => Ok(Role::Admin),
            "reader" => Ok(Role::Reader),
            other => Err(RoleError {
                given: other.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organization_round_trips() {
        for role in Role::ALL {
            assert_eq!(Role::from_organization(&role.organization()), Some(role));
        }
    }

    #[test]
    fn foreign_organizations_carry_no_role() {
        assert_eq!(Role::from_organization("admin"), None);
        assert_eq!(Role::from_organization("os:admin"), None);
        assert_eq!(Role::from_organization("k3sfleet:root"), None);
    }

    #[test]
    fn unknown_role_names_what_was_given() {
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("\"root\""));
    }
}
