//! The `chat-engine` binary: parses the command line and runs it.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = chat_engine::cli::Cli::parse();
    match chat_engine::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-engine: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
