//! Compiles the workspace's `proto/` with protox (pure Rust, no system `protoc`) into the
//! messages and clients of `chatengine.v1` and `chatengine.admin.v1`. No servers: the
//! chat-engine server generates its own, over these same message types.

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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let mut files = Vec::new();
    protos(&root.join("chatengine"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", root.display());

    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // The `Connect` RPC would clash with the generated `connect` constructor; clients are
        // built with `XClient::new(channel)` instead.
        .build_transport(false)
        // google.rpc.Status (Connect acks) and its details are tonic-types' own types, so the
        // `tonic_types::StatusExt` helpers work on them.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(fds)?;
    Ok(())
}
