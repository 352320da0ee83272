//! The k3sfleet.v1 protocol: generated messages and tonic services, their
//! proto3 JSON mapping (what `-o json` prints), the protocol version range this
//! build speaks, and the descriptor set for gRPC server reflection.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("k3sfleet.v1");
    include!(concat!(env!("OUT_DIR"), "/k3sfleet.v1.serde.rs"));
}

mod codec;
mod version;

pub use codec::CompactCodec;

/// The one rule for a K3s release tag, shared with signed release manifests.
pub use k3sfleet_release::is_release_tag;
pub use version::{PROTOCOL, ProtocolMismatch, negotiate};

/// Encoded `FileDescriptorSet` of every k3sfleet.v1 file, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("k3sfleet_descriptor");
