//! Test harness: one private PostgreSQL cluster per test run, a database per test cloned from a
//! migrated template, a real server on port 0 in front of it, and the helpers tests call it with.
//!
//! The parts: [`cluster`] (the shared cluster, fresh databases, a test's own cluster),
//! [`app`] (spawning servers and fixtures), [`requests`] (metadata and the common calls),
//! [`events`] (reading Subscribe streams), [`nats`] (a NATS server of the test's own).

mod app;
mod cluster;
mod events;
mod nats;
mod requests;

pub use app::{KillableNode, Options, TenantFixture, TestApp};
pub use cluster::{fresh_database, own_cluster};
pub use events::{Events, posted_text};
pub use nats::Nats;
pub use requests::{bearer, group, send, violated_fields, with_key};
