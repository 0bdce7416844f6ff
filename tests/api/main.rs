//! Integration tests: a real PostgreSQL cluster per run, a database per test, a real server
//! on port 0, called through the generated Rust clients and raw gRPC-web frames.

mod agents;
mod analytics;
mod auth;
mod client_crate;
mod cluster;
mod delivery;
mod directory;
mod dispatch;
mod harness;
mod isolation;
mod loadtest;
mod logs;
mod messaging;
mod nodes;
mod participants;
mod queue_positions;
mod queue_watch;
mod server;
mod spine;
mod tenants;
mod visitors;
mod web;
mod workflows;
