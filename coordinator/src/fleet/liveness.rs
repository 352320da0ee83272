//! Whether a node is reachable, from what it last did and when.

use k3sfleet_proto::v1::Connectivity;

/// A node that misses this many report intervals is unreachable.
pub const MISSED_REPORTS_UNREACHABLE: i64 = 3;

/// Connectivity of a node at `now_ms`.
///
/// `last_heard_ms` is the newest of its hello and its last report.
pub fn connectivity(
    connected: bool,
    last_heard_ms: i64,
    report_interval_ms: i64,
    now_ms: i64,
) -> Connectivity {
    if !connected {
        return Connectivity::Disconnected;
    }
    let silent_for = now_ms.saturating_sub(last_heard_ms);
    if silent_for > MISSED_REPORTS_UNREACHABLE * report_interval_ms.max(1) {
        Connectivity::Unreachable
    } else {
        Connectivity::Connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_missed_intervals_make_a_node_unreachable() {
        let interval = 15_000;
        assert_eq!(
            connectivity(true, 0, interval, 45_000),
            Connectivity::Connected
        );
        assert_eq!(
            connectivity(true, 0, interval, 45_001),
            Connectivity::Unreachable
        );
        assert_eq!(
            connectivity(false, 0, interval, 1),
            Connectivity::Disconnected
        );
    }
}
