//! Protocol messages on both sides of the agent's session: what a hostile
//! agent sends the coordinator, and what a hostile coordinator (or a
//! man in the middle past TLS) sends an agent.
#![no_main]

use k3sfleet_proto::v1::{AgentMessage, CoordinatorMessage, ProtocolRange, agent_message};
use k3sfleet_proto::{PROTOCOL, negotiate};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = AgentMessage::decode(bytes) {
        if let Some(agent_message::Body::Hello(hello)) = &message.body {
            let peer = hello.protocol.unwrap_or(ProtocolRange { min: 0, max: 0 });
            if let Some(version) = negotiate(PROTOCOL, peer) {
                assert!(PROTOCOL.min <= version && version <= PROTOCOL.max);
            }
        }
        // What decoded encodes, decodes and encodes again to the same bytes
        // (bytes, not messages: a NaN in a double field is not equal to
        // itself).
        let encoded = message.encode_to_vec();
        let again = AgentMessage::decode(encoded.as_slice()).expect("what was encoded decodes");
        assert_eq!(again.encode_to_vec(), encoded);
    }
    let _ = CoordinatorMessage::decode(bytes);
});
