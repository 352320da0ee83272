//! The roles a client certificate can carry.

use std::fmt;
use std::str::FromStr;

use k3sfleet_proto::v1::NodeRole;

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

/// Prefix of the Subject OrganizationalUnit that carries a K3s role.
const K3S_ROLE_OU_PREFIX: &str = "k3s:";

/// What a host runs of K3s, bound into its agent's certificate at enrollment
/// (Subject OU=k3s:server or k3s:agent): the etcd quorum guard counts
/// servers, so a host must not become one by saying so in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum K3sRole {
    /// A K3s server: control plane and embedded etcd member.
    Server,
    /// A K3s agent: a worker.
    Agent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown K3s role {given:?}: expected server or agent")]
pub struct K3sRoleError {
    pub given: String,
}

impl K3sRole {
    pub fn as_str(self) -> &'static str {
        match self {
            K3sRole::Server => "server",
            K3sRole::Agent => "agent",
        }
    }

    /// The Subject OrganizationalUnit value that carries this role.
    pub fn organizational_unit(self) -> String {
        format!("{K3S_ROLE_OU_PREFIX}{}", self.as_str())
    }

    /// The role carried by a Subject OrganizationalUnit value, if any.
    pub fn from_organizational_unit(unit: &str) -> Option<K3sRole> {
        unit.strip_prefix(K3S_ROLE_OU_PREFIX)?.parse().ok()
    }

    /// The protocol's node role (`NodeRole` as sent); unspecified or unknown
    /// is `None`.
    pub fn from_proto(role: i32) -> Option<K3sRole> {
        match NodeRole::try_from(role).ok()? {
            NodeRole::Server => Some(K3sRole::Server),
            NodeRole::Agent => Some(K3sRole::Agent),
            NodeRole::Unspecified => None,
        }
    }
}

impl From<K3sRole> for NodeRole {
    fn from(role: K3sRole) -> NodeRole {
        match role {
            K3sRole::Server => NodeRole::Server,
            K3sRole::Agent => NodeRole::Agent,
        }
    }
}

impl fmt::Display for K3sRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for K3sRole {
    type Err = K3sRoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(K3sRole::Server),
            "agent" => Ok(K3sRole::Agent),
            other => Err(K3sRoleError {
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
    fn k3s_roles_round_trip_and_foreign_units_carry_none() {
        for role in [K3sRole::Server, K3sRole::Agent] {
            assert_eq!(
                K3sRole::from_organizational_unit(&role.organizational_unit()),
                Some(role)
            );
        }
        assert_eq!(K3sRole::from_organizational_unit("server"), None);
        assert_eq!(K3sRole::from_organizational_unit("k3s:etcd"), None);
    }

    #[test]
    fn unknown_role_names_what_was_given() {
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("\"root\""));
    }
}
