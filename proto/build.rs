//! Generates the k3sfleet.v1 tonic code and its proto3 JSON mapping. Uses the
//! vendored protoc unless PROTOC is set, so building needs no system package.
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "k3sfleet/v1/agent.proto",
    "k3sfleet/v1/admin.proto",
    "k3sfleet/v1/commands.proto",
    "k3sfleet/v1/drain.proto",
    "k3sfleet/v1/enrollment.proto",
    "k3sfleet/v1/health.proto",
    "k3sfleet/v1/rollout.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("k3sfleet_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        // Small starting buffers per stream (src/codec.rs).
        .codec_path("crate::CompactCodec")
        .compile_with_config(config, PROTOS, &["."])?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_path)?)?
        .build(&[".k3sfleet.v1"])?;
    Ok(())
}
