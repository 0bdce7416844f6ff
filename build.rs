//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates the tonic
//! servers and clients plus the descriptor set that reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: Vec<PathBuf> = std::fs::read_dir("proto/chatengine/v1")?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let mut files: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
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
        .compile_fds(fds)?;
    Ok(())
}
