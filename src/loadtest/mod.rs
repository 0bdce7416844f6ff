//! `chat-engine loadtest`: a load generator that drives the gRPC API through the generated
//! Rust clients and reports throughput, delivery latency and memory.
//!
//! Five modes:
//!
//! - `messages` (default): every agent holds one `Subscribe` stream on its own HTTP/2
//!   connection. Senders post messages into group conversations that hold every agent, at a
//!   fixed total rate or as fast as a bounded number of in-flight calls allows. Each stream
//!   measures, for every message, the time from the start of its `SendMessage` call to its
//!   arrival on the stream (the send instant travels inside the message text), and checks that
//!   every acknowledged message reached every stream exactly once.
//! - `idle`: opens many idle `Subscribe` streams and reports resident memory per stream.
//! - `broadcast`: the same kind of messages through this process's event hub alone, as a
//!   ceiling without network or database.
//! - `analytics`: a year of one tenant's chats and messages generated inside PostgreSQL,
//!   the analytics aggregates rebuilt from them, and the historical queries timed.
//! - `routing`: visitors start chats through the widget API at a rate, the dispatcher routes
//!   them to agents with capacities, and the agents close them after a think time; reports
//!   chats started and routed per second, the time from a chat becoming assignable to its
//!   assignment, queue-position staleness and over-capacity assignments.
//!
//! By default it starts its own server in this process, over a private PostgreSQL cluster in a
//! fresh temporary directory (or over `DATABASE_URL` when set), so memory figures are those
//! of the whole process: server and load generator together. To measure a server alone, run
//! `chat-engine serve` separately and pass `--target`, `--operator-token` and `--server-pid`.
//!
//! Every phase is bounded: sending stops at its deadline, every wait has a timeout, streams
//! reconnect a limited number of times, and only loopback targets are accepted. Message texts,
//! passwords and tokens are never printed.
//!
//! The parts: [`target`] (which server, its memory, the in-process one), [`client`] (calls,
//! setup of the tenant, agents and conversations), [`report`] (figures and error lists),
//! [`messages`] with [`connect`] (messages mode over unary calls or Connect streams),
//! [`idle`], [`broadcast`] and [`routing`].

mod analytics;
mod broadcast;
mod client;
mod connect;
mod idle;
mod messages;
mod report;
mod routing;
mod target;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::builder::RangedU64ValueParser;

use crate::config::Config;
use crate::domain::conversations::MAX_MEMBERS;
use target::{RssSource, Target};

/// A count flag's parser: `lo..=hi`, checked by clap so its error names the flag and range.
fn count(lo: usize, hi: usize) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(lo as u64..=hi as u64)
}

/// What the load generator measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Message throughput and send-to-delivery latency.
    Messages,
    /// Resident memory per idle Subscribe stream.
    Idle,
    /// Baseline without network or database: the same messages through this process's
    /// event hub to two subscribers, as fast as it goes.
    Broadcast,
    /// Visitors' chats routed to agents who close them after a think time.
    Routing,
    /// A year of one tenant's chats generated in the database, the analytics aggregates
    /// rebuilt from it, and the historical queries timed.
    Analytics,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Messages => "messages",
            Mode::Idle => "idle",
            Mode::Broadcast => "broadcast",
            Mode::Routing => "routing",
            Mode::Analytics => "analytics",
        }
    }
}

/// Which RPCs messages mode drives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `SendMessage` calls, events on `Subscribe` streams.
    Unary,
    /// Sends and events on one `Connect` stream per agent.
    Connect,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Unary => "unary",
            Api::Connect => "connect",
        }
    }
}

/// Options of `chat-engine loadtest`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// What to measure: `messages` (throughput and delivery latency), `idle` (memory per
    /// open stream), `broadcast` (the hub alone) or `routing` (visitors' chats routed to
    /// agents).
    #[arg(long, value_enum, default_value_t = Mode::Messages)]
    pub mode: Mode,
    /// Agents to create, 2-500; in messages mode each holds one Subscribe stream on its own
    /// HTTP/2 connection and sends.
    #[arg(long, default_value_t = 4, value_parser = count(2, MAX_MEMBERS))]
    pub agents: usize,
    /// Group conversations, each holding every agent; messages are spread over them.
    #[arg(long, default_value_t = 2, value_parser = count(1, 1000))]
    pub conversations: usize,
    /// Seconds to send for (messages mode), or for visitors to arrive (routing mode).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Total messages per second over all senders, or visitors arriving per second (routing
    /// mode); 0 goes as fast as --concurrency allows.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub rate: u32,
    /// Most sends in flight at once; in routing mode, most visitors arriving at once
    /// (InitVisitor, StartChat and opening SubscribeVisitor).
    #[arg(long, default_value_t = 64, value_parser = count(1, 10_000))]
    pub concurrency: usize,
    /// How messages mode sends and receives: a unary `SendMessage` call per message with a
    /// `Subscribe` stream per agent, or one bidirectional `Connect` stream per agent that
    /// carries that agent's sends (pipelined) and its events.
    #[arg(long, value_enum, default_value_t = Api::Unary)]
    pub api: Api,
    /// Seconds to wait, once sending stops, for every acknowledged message to reach every
    /// stream; what has not arrived by then is reported as undelivered. In routing mode
    /// without --hold: seconds to wait, once arrivals stop, for every chat to be routed and
    /// closed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub drain_timeout: u64,
    /// Idle Subscribe streams to open (idle mode), spread over the agents.
    #[arg(long, default_value_t = 1000, value_parser = count(1, 100_000))]
    pub streams: usize,
    /// Idle streams per HTTP/2 connection (idle mode), or visitor streams per connection
    /// (routing mode); at most the server's max_concurrent_streams.
    #[arg(long, default_value_t = 100, value_parser = count(1, 10_000))]
    pub streams_per_connection: usize,
    /// Seconds to keep the idle streams open after measuring (idle mode); in routing mode,
    /// seconds the agents keep handling chats once arrivals stop (then the run ends with
    /// whoever still waits), instead of waiting until every chat was routed.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub hold: u64,
    /// Messages to post into the first conversation before the idle streams open; every
    /// stream then resumes from before them, so it starts by replaying them (idle mode).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub replay: u64,
    /// Seats of each agent (routing mode): the chats they hold at once, 1-100.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub capacity: u32,
    /// Milliseconds an agent keeps a chat before closing it (routing mode).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub think_ms: u64,
    /// Replies an agent sends into each chat it joins, spread over --think-ms, before it
    /// closes the chat (routing mode); with replies the run also measures how far the
    /// analytics aggregates trail them.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub replies: u32,
    /// Visitors to start at most (routing mode); arrivals also stop after --duration.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub visitors: u64,
    /// Agents become available only once arrivals end (routing mode), so every visitor
    /// queues first: how a full queue drains.
    #[arg(long)]
    pub queue_first: bool,
    /// CreateAgent and Login calls at once during setup (each runs argon2 on the server);
    /// defaults to the number of CPUs.
    #[arg(long, value_parser = count(1, 256))]
    pub setup_concurrency: Option<usize>,
    /// Drive an already running server at this loopback URL (e.g. http://127.0.0.1:50051)
    /// instead of starting one in this process.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Operator token of the --target server; defaults to the configured operator_token
    /// (CHAT_ENGINE_OPERATOR_TOKEN), which keeps it out of the process list.
    #[arg(long, value_name = "TOKEN")]
    pub operator_token: Option<String>,
    /// Process id of the --target server, whose resident memory (VmRSS) is reported.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Worker threads of the load generator driving a --target server (default: one per
    /// CPU). Beside the server on one machine, one thread makes the same calls on the same
    /// connections with less of the machine (BENCHMARKS.md, session 18).
    #[arg(long, value_parser = count(1, 256))]
    pub threads: Option<usize>,
    /// Data directory of the in-process server (private cluster, JWT secret); by default a
    /// fresh temporary directory, removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// External chats to generate (analytics mode).
    #[arg(long, default_value_t = 10_000, value_parser = count(1, 5_000_000))]
    pub chats: usize,
    /// Messages of each answered chat (analytics mode); unanswered chats have one.
    #[arg(long, default_value_t = 11, value_parser = count(2, 100))]
    pub messages_per_chat: usize,
    /// Days the generated chats spread over, up to now (analytics mode).
    #[arg(long, default_value_t = 365, value_parser = count(1, 730))]
    pub days: usize,
    /// Times each historical query is run (analytics mode).
    #[arg(long, default_value_t = 100, value_parser = count(1, 10_000))]
    pub queries: usize,
    /// Also print the results as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    fn setup_concurrency(&self) -> usize {
        self.setup_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(64)))
    }

    /// The checks that span several flags; each flag's own range is clap's.
    fn validate(&self) -> anyhow::Result<()> {
        if self.target.is_none()
            && (self.operator_token.is_some()
                || self.server_pid.is_some()
                || self.threads.is_some())
        {
            bail!("--operator-token, --server-pid and --threads go with --target");
        }
        if self.target.is_some() && self.data_dir.is_some() {
            bail!("--data-dir is for the in-process server; it cannot go with --target");
        }
        if self.target.is_some() && self.mode == Mode::Analytics {
            bail!("analytics mode generates data in its own database; it cannot go with --target");
        }
        if self.target.is_some() && self.mode == Mode::Idle && self.server_pid.is_none() {
            bail!("idle mode measures the server's memory: with --target, pass --server-pid");
        }
        Ok(())
    }
}

/// Runs the load generator: starts or targets a server, sets up a tenant, agents and
/// conversations, drives the chosen mode and prints the report.
pub async fn run(args: Args, cfg: Config) -> anyhow::Result<()> {
    args.validate()?;
    if args.mode == Mode::Broadcast {
        return broadcast::run(&args).await;
    }
    match args.target.clone() {
        Some(raw) => {
            let url = target::loopback_url(&raw)?;
            let operator_token = match (&args.operator_token, &cfg.operator_token) {
                (Some(t), _) => t.clone(),
                (None, Some(t)) => t.expose().to_owned(),
                (None, None) => bail!(
                    "--target needs the server's operator token: --operator-token or \
                     CHAT_ENGINE_OPERATOR_TOKEN"
                ),
            };
            let rss = match args.server_pid {
                Some(pid) => {
                    let src = RssSource::Pid(pid);
                    src.read()
                        .with_context(|| format!("reading the memory of process {pid}"))?;
                    src
                }
                None => RssSource::Unknown,
            };
            let target = Target {
                description: format!("external server at {url}"),
                url,
                operator_token,
                rss,
            };
            target::with_interrupt(target::drive(&args, &target)).await
        }
        None => target::in_process(&args, cfg).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_flags_naming_the_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: Args,
        }
        let parse = |xs: &[&str]| T::try_parse_from([&["t"], xs].concat()).map(|t| t.a);
        assert!(parse(&[]).unwrap().validate().is_ok());
        // Each flag's own range: clap refuses it, naming the flag and the range.
        for (flag, bad, good) in [
            ("--agents", "1", "2"),
            ("--agents", "501", "500"),
            ("--conversations", "0", "1000"),
            ("--duration", "0", "3600"),
            ("--rate", "1000001", "0"),
            ("--concurrency", "0", "10000"),
            ("--drain-timeout", "601", "0"),
            ("--streams", "100001", "1"),
            ("--streams-per-connection", "0", "10000"),
            ("--hold", "3601", "3600"),
            ("--replay", "100001", "100000"),
            ("--setup-concurrency", "257", "1"),
            ("--capacity", "0", "100"),
            ("--capacity", "101", "1"),
            ("--think-ms", "600001", "0"),
            ("--visitors", "0", "1000000"),
        ] {
            let err = parse(&[flag, bad])
                .err()
                .unwrap_or_else(|| panic!("{flag} {bad}"));
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(err.to_string().contains(flag), "{err}");
            assert!(
                parse(&[flag, good]).unwrap().validate().is_ok(),
                "{flag} {good}"
            );
        }
        assert!(parse(&["--agents", "-1"]).is_err());
        // Checks across flags.
        assert!(parse(&["--server-pid", "1"]).unwrap().validate().is_err());
        // The in-process server runs on the load generator's threads.
        assert!(parse(&["--threads", "1"]).unwrap().validate().is_err());
        assert!(
            parse(&["--threads", "1", "--target", "http://127.0.0.1:1"])
                .unwrap()
                .validate()
                .is_ok()
        );
        assert!(
            parse(&["--mode", "idle", "--target", "http://127.0.0.1:1"])
                .unwrap()
                .validate()
                .is_err()
        );
        assert!(parse(&["--mode", "bogus"]).is_err());
    }
}
