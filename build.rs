//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates the tonic
//! servers and clients plus the descriptor set that reflection serves.

use std::path::{Path, PathBuf};

/// Every `.proto` file under `dir`, recursively.
fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Our packages (`chatengine.v1`, `chatengine.admin.v1`); the vendored `google/` files are
    // compiled only as far as these import them.
    let mut files = Vec::new();
    protos(Path::new("proto/chatengine"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("chatengine_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The `Connect` RPC would clash with the generated `connect` constructor; clients are
        // built with `XClient::new(channel)` instead.
        .build_transport(false)
        .codec_path("crate::grpc::codec::LeanCodec")
        // google.rpc.Status (Connect acks) and its details are tonic-types' own types, so the
        // `tonic_types::StatusExt` helpers work on them.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(fds)?;
    Ok(())
}
