//! Compiles `proto/` with protox (pure Rust, no system `protoc`) into the descriptor set that
//! reflection serves, and generates the tonic servers. The messages (and clients) are the
//! `chat-engine-client` crate's: the servers here are generated over its types, so there is
//! one set of wire types, and with our own codec ([`LeanCodec`](src/grpc/codec.rs)).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tonic_build::manual::{Builder, Method, Service};

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

/// `SendMessage` → `send_message`, as prost and tonic name methods.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// The client crate's Rust path of a fully qualified message name (`.chatengine.v1.X`).
fn rust_type(proto: &str) -> String {
    let path = proto.trim_start_matches('.').replace('.', "::");
    format!("::chat_engine_client::pb::{path}")
}

/// The leading comment of the element at `path` (source info paths: 6 = services, 2 = their
/// methods), one entry per line, as the generated docs take it.
fn comments(file: &prost_types::FileDescriptorProto, path: &[i32]) -> Vec<String> {
    file.source_code_info
        .iter()
        .flat_map(|info| &info.location)
        .find(|l| l.path == path)
        .and_then(|l| l.leading_comments.as_deref())
        .map(|c| c.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Our packages (`chatengine.v1`, `chatengine.admin.v1`); the vendored `google/` files are
    // compiled only as far as these import them.
    let mut files = Vec::new();
    protos(Path::new("proto/chatengine"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    // `embed_migrations!` reads the folder at compile time; a new migration must rebuild.
    println!("cargo:rerun-if-changed=migrations");

    let fds = protox::compile(&files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("chatengine_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    // One file of servers per package, e.g. `chatengine.v1.servers.rs`.
    let parts = out.join("servers");
    std::fs::create_dir_all(&parts)?;
    let mut packages: Vec<(String, Vec<String>)> = Vec::new();
    for file in &fds.file {
        let package = file.package().to_owned();
        let mut services = Vec::new();
        let mut names = Vec::new();
        for (si, s) in (0..).zip(&file.service) {
            names.push(format!("{package}.{}.rs", s.name()));
            let mut service = Service::builder().name(s.name()).package(&package);
            for line in comments(file, &[6, si]) {
                service = service.comment(line);
            }
            for (mi, m) in (0..).zip(&s.method) {
                let mut method = Method::builder()
                    .name(snake(m.name()))
                    .route_name(m.name())
                    .input_type(rust_type(m.input_type()))
                    .output_type(rust_type(m.output_type()))
                    .codec_path("crate::grpc::codec::LeanCodec");
                for line in comments(file, &[6, si, 2, mi]) {
                    method = method.comment(line);
                }
                if m.client_streaming() {
                    method = method.client_streaming();
                }
                if m.server_streaming() {
                    method = method.server_streaming();
                }
                service = service.method(method.build());
            }
            services.push(service.build());
        }
        if services.is_empty() {
            continue;
        }
        Builder::new()
            .build_client(false)
            .build_server(true)
            .build_transport(false)
            .out_dir(&parts)
            .compile(&services);
        match packages.iter_mut().find(|(p, _)| *p == package) {
            Some((_, n)) => n.extend(names),
            None => packages.push((package, names)),
        }
    }
    for (package, names) in packages {
        let mut code = String::new();
        for n in names {
            writeln!(code, "{}", std::fs::read_to_string(parts.join(n))?)?;
        }
        std::fs::write(out.join(format!("{package}.servers.rs")), code)?;
    }
    Ok(())
}
