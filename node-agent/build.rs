//! Generates the CRI client the agent pre-pulls images with, from the vendored CRI API
//! definition (`proto/runtime/v1/api.proto`). Client only, and no `connect` helper: the agent
//! builds its own channel to the runtime's unix socket, and serves no gRPC. Needs `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_protos(&["proto/runtime/v1/api.proto"], &["proto"])?;
    Ok(())
}
