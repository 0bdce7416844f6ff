//! The `chat-engine` binary: parses the command line and runs it.

use clap::Parser;

/// mimalloc instead of glibc's malloc: the server allocates and frees many small buffers per
/// request (h2 frames, protobuf messages, rows), and glibc's free lists cost about a tenth of
/// its time under load (BENCHMARKS.md, session 17).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = chat_engine::cli::Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.worker_threads() {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat-engine: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chat_engine::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-engine: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
