//! Whether a node is reachable, from what it last did and when.

use std::time::Duration;

use k3sfleet_proto::v1::Connectivity;

/// A node that misses this many report intervals is unreachable.
pub const MISSED_REPORTS_UNREACHABLE: i64 = 3;

/// A session silent for one interval more than makes its node unreachable
/// is given up (its agent has most likely given it up too, and reconnects).
const MISSED_REPORTS_GIVEN_UP: u32 = MISSED_REPORTS_UNREACHABLE as u32 + 1;

/// Never sooner than this: an agent pings the coordinator every 10 s and
/// gives a silent one up after 20 s more (k3sfleet_pki::dial), so a network
/// blip shorter than that costs neither side its session.
const GIVE_UP_AT_THE_EARLIEST: Duration = Duration::from_secs(20);

/// How long a session may stay silent before the coordinator gives it up.
///
/// The reports are the coordinator's keepalive: it sends no HTTP/2 pings of
/// its own (one direction is enough, and at 10,000 agents the second cost
/// 1,000 pings a second).
pub fn silence_limit(report_interval: Duration) -> Duration {
    (report_interval * MISSED_REPORTS_GIVEN_UP).max(GIVE_UP_AT_THE_EARLIEST)
}

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
    fn a_session_is_given_up_after_four_missed_intervals_and_never_within_20s() {
        assert_eq!(
            silence_limit(Duration::from_secs(15)),
            Duration::from_secs(60)
        );
        assert_eq!(
            silence_limit(Duration::from_secs(1)),
            Duration::from_secs(20)
        );
        assert_eq!(silence_limit(Duration::ZERO), Duration::from_secs(20));
    }

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
