//! Protocol versioning between agents and the coordinator.
//!
//! Both sides announce the range of protocol versions they speak. They use the
//! highest version in both ranges; when the ranges do not overlap the stream is
//! refused with a message that names both sides' versions, so an operator
//! knows which side to upgrade.

use crate::v1::ProtocolRange;

/// The protocol versions this build speaks.
///
/// Bump `max` when adding behaviour a peer must understand; raise `min` only
/// when dropping support for an old peer.
pub const PROTOCOL: ProtocolRange = ProtocolRange { min: 1, max: 1 };

/// The two sides share no protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no common protocol version: {local_name} {local_version} speaks k3sfleet.v1 protocol {}..={}, \
     {peer_name} {peer_version} speaks {}..={}; upgrade the older side",
    local.min, local.max, peer.min, peer.max
)]
pub struct ProtocolMismatch {
    pub local_name: &'static str,
    pub local_version: String,
    pub local: ProtocolRange,
    pub peer_name: &'static str,
    pub peer_version: String,
    pub peer: ProtocolRange,
}

/// Picks the highest version both ranges contain.
///
/// A peer that sent no range (all zero) is treated as speaking version 1,
/// the first released protocol.
pub fn negotiate(local: ProtocolRange, peer: ProtocolRange) -> Option<u32> {
    let peer = if peer.max == 0 {
        ProtocolRange { min: 1, max: 1 }
    } else {
        peer
    };
    let low = local.min.max(peer.min);
    let high = local.max.min(peer.max);
    (low <= high).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: u32, max: u32) -> ProtocolRange {
        ProtocolRange { min, max }
    }

    #[test]
    fn picks_the_highest_shared_version() {
        assert_eq!(negotiate(range(1, 3), range(2, 5)), Some(3));
        assert_eq!(negotiate(range(2, 5), range(1, 3)), Some(3));
        assert_eq!(negotiate(range(1, 1), range(1, 1)), Some(1));
    }

    #[test]
    fn disjoint_ranges_do_not_negotiate() {
        assert_eq!(negotiate(range(1, 1), range(2, 3)), None);
        assert_eq!(negotiate(range(4, 5), range(1, 3)), None);
    }

    #[test]
    fn a_peer_without_a_range_speaks_version_one() {
        assert_eq!(negotiate(range(1, 2), range(0, 0)), Some(1));
        assert_eq!(negotiate(range(2, 2), range(0, 0)), None);
    }

    #[test]
    fn mismatch_message_names_both_sides() {
        let err = ProtocolMismatch {
            local_name: "coordinator",
            local_version: "0.2.0".into(),
            local: range(2, 3),
            peer_name: "agent",
            peer_version: "0.1.0".into(),
            peer: range(1, 1),
        };
        let text = err.to_string();
        assert!(
            text.contains("coordinator 0.2.0 speaks k3sfleet.v1 protocol 2..=3"),
            "{text}"
        );
        assert!(text.contains("agent 0.1.0 speaks 1..=1"), "{text}");
    }
}
