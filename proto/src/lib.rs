//! The k3sfleet.v1 protocol: protobuf definitions and generated tonic code
