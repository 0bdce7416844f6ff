//! `chat-engine loadtest` runs for real: the built binary starts its own server over a private
//! PostgreSQL cluster in a temporary directory, drives it for a couple of seconds with small
//! numbers, and reports figures that add up. Speed is not asserted.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// A guard against a hung run; the runs below take a few seconds.
const LIMIT: Duration = Duration::from_secs(120);

/// Runs `chat-engine loadtest <args>`; returns the JSON object on the last line of stdout and
/// everything the process printed.
fn loadtest(args: &[&str]) -> (Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-engine"))
        .arg("loadtest")
        .args(args)
        // Its own private cluster, whatever the developer's environment says.
        .env_remove("DATABASE_URL")
        .env_remove("CHAT_ENGINE_DATABASE_URL")
        .env_remove("CHAT_ENGINE_MIGRATION_DATABASE_URL")
        .env_remove("CHAT_ENGINE_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chat-engine loadtest");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for loadtest") {
            break status;
        }
        if Instant::now() > deadline {
            // SIGINT lets it stop its PostgreSQL cluster; SIGKILL if that hangs too.
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGINT);
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadtest {args:?} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "loadtest {args:?} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line of stdout is not JSON ({e}):\n{stdout}"));
    (report, format!("{stdout}\n{stderr}"))
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

#[test]
fn messages_mode_delivers_every_acknowledged_message_to_every_member() {
    let (r, printed) = loadtest(&[
        "--duration",
        "2",
        "--agents",
        "3",
        "--conversations",
        "1",
        "--rate",
        "50",
        "--json",
    ]);
    assert_eq!(r["mode"], "messages");
    assert_eq!(r["agents"], 3);
    assert_eq!(r["conversations"], 1);
    assert_eq!(r["duration_s"], 2);
    let sent = r["sent_ok"].as_u64().expect("sent_ok");
    assert!(sent > 0, "nothing was acknowledged: {r}");
    assert_eq!(r["send_errors"], 0, "{r}");
    assert_eq!(r["undelivered"], 0, "{r}");
    // Every agent is in the conversation and holds a stream, the sender included.
    assert_eq!(r["deliveries"].as_u64(), Some(sent * 3), "{r}");
    assert!(number(&r, "persisted_per_s") > 0.0, "{r}");
    assert!(number(&r, "deliveries_per_s") > 0.0, "{r}");
    let lat = &r["latency_ms"];
    let (p50, p99, max) = (number(lat, "p50"), number(lat, "p99"), number(lat, "max"));
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{lat}");
    assert!(number(&r, "rss_kib") > 0.0, "{r}");
    assert!(number(&r, "rss_kib_before") > 0.0, "{r}");
    // Message texts never appear in the output.
    let run = r["tenant"]
        .as_str()
        .and_then(|t| t.strip_prefix("loadtest-"))
        .expect("tenant slug");
    assert!(!printed.contains(&format!("loadtest {run} ")), "{printed}");
    assert!(!printed.contains("Bearer"), "{printed}");
}

#[test]
fn connect_api_sends_and_receives_on_one_stream_per_agent() {
    let (r, _) = loadtest(&[
        "--api",
        "connect",
        "--duration",
        "2",
        "--agents",
        "2",
        "--conversations",
        "2",
        "--concurrency",
        "16",
        "--json",
    ]);
    assert_eq!(r["api"], "connect");
    let sent = r["sent_ok"].as_u64().expect("sent_ok");
    assert!(sent > 0, "nothing was acknowledged: {r}");
    // Every command sent up a stream got its ack.
    assert_eq!(r["attempted"].as_u64(), Some(sent), "{r}");
    assert_eq!(r["send_errors"], 0, "{r}");
    assert_eq!(r["undelivered"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["deliveries"].as_u64(), Some(sent * 2), "{r}");
    let lat = &r["send_latency_ms"];
    assert!(number(lat, "p50") <= number(lat, "max"), "{lat}");
}

#[test]
fn idle_mode_reports_memory_per_open_stream() {
    // Each stream resumes from before 30 posted messages; one that catches up having
    // replayed fewer counts as a stream error.
    let (r, _) = loadtest(&[
        "--mode",
        "idle",
        "--streams",
        "20",
        "--replay",
        "30",
        "--json",
    ]);
    assert_eq!(r["mode"], "idle");
    assert_eq!(r["streams"], 20);
    assert_eq!(r["replayed_per_stream"], 30, "{r}");
    assert_eq!(r["streams_open"], 20, "{r}");
    assert_eq!(r["stream_errors"], 0, "{r}");
    assert!(number(&r, "rss_kib") > 0.0, "{r}");
    assert!(number(&r, "rss_per_stream_kib") > 0.0, "{r}");
}

#[test]
fn routing_mode_routes_every_chat_within_capacity() {
    // Six seats for twenty visitors: most chats wait for a seat freed by a close.
    let (r, printed) = loadtest(&[
        "--mode",
        "routing",
        "--agents",
        "3",
        "--capacity",
        "2",
        "--think-ms",
        "30",
        "--replies",
        "2",
        "--visitors",
        "20",
        "--concurrency",
        "4",
        "--duration",
        "30",
        "--drain-timeout",
        "60",
        "--json",
    ]);
    assert_eq!(r["mode"], "routing");
    assert_eq!(
        (r["agents"].as_u64(), r["capacity"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(r["started"], 20, "{r}");
    // Every chat was routed to an agent and closed by them, nobody over their seats.
    assert_eq!(r["assigned"], 20, "{r}");
    assert_eq!(r["closed"], 20, "{r}");
    assert_eq!(r["waiting_at_end"], 0, "{r}");
    assert_eq!(r["over_capacity"], 0, "{r}");
    for e in [
        "start_errors",
        "close_errors",
        "stream_errors",
        "reply_errors",
    ] {
        assert_eq!(r[e], 0, "{e}: {r}");
    }
    // Two replies in each chat, and the analytics aggregates counted every chat's first
    // reply once the run was over.
    assert_eq!(r["replies_ok"], 40, "{r}");
    assert!(number(&r, "analytics_caught_up_s") >= 0.0, "{r}");
    assert!(r["analytics_lag_ms"].is_object(), "{r}");
    assert!(number(&r, "started_per_s") > 0.0, "{r}");
    assert!(number(&r, "routed_per_s") > 0.0, "{r}");
    let lat = &r["assign_latency_ms"];
    let (p50, p99, max) = (number(lat, "p50"), number(lat, "p99"), number(lat, "max"));
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{lat}");
    // Staleness has samples only when visitors waited long enough to see their place
    // move; its shape is the same either way.
    assert!(r["staleness_ms"].is_object(), "{r}");
    assert!(!printed.contains("Bearer"), "{printed}");
}

#[test]
fn analytics_mode_generates_rebuilds_and_times_the_reports() {
    let (r, _) = loadtest(&[
        "--mode",
        "analytics",
        "--chats",
        "500",
        "--days",
        "100",
        "--agents",
        "5",
        "--queries",
        "3",
        "--json",
    ]);
    assert_eq!(r["mode"], "analytics");
    assert_eq!(r["chats"], 500);
    // 94% answered with 11 messages, the rest with one.
    assert_eq!(r["messages"], 470 * 11 + 30);
    assert_eq!(r["tenant_by_day_90d"]["series"], 1);
    assert_eq!(r["per_agent_by_day_90d"]["series"], 5);
    // The same reports in another zone than the tenant's (the slots, not the days).
    assert_eq!(r["tenant_by_day_90d_other_zone"]["series"], 1);
    assert_eq!(r["per_agent_by_day_90d_other_zone"]["series"], 5);
    let p = &r["per_agent_by_day_90d"];
    assert!(number(p, "p50_ms") <= number(p, "p99_ms"), "{p}");
}
