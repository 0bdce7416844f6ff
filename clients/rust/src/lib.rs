//! chat-engine's Rust client: the generated messages and clients of `chatengine.v1` and
//! `chatengine.admin.v1` ([`pb`], tonic 0.14 and prost 0.14, built from `proto/` by protox),
//! an auth interceptor ([`Auth`]) and a resuming subscriber ([`ResumingSubscriber`]).
//!
//! Client-only: no server code. Clients are built with `XClient::new(channel)` or
//! `XClient::with_interceptor(channel, auth)` (the conversation service's `Connect` RPC would
//! clash with a generated `connect` constructor, so there is none). `google.rpc` types are
//! tonic-types' own, so `tonic_types::StatusExt` reads the error details of a `Status`.

#![warn(missing_docs)]

pub mod auth;
pub mod pb;
pub mod subscriber;

pub use auth::Auth;
pub use subscriber::{Backoff, ResumingSubscriber, StreamResponse};
pub use tonic::transport::{Channel, Endpoint};

/// A lazily connecting channel to `url` (`http://host:port`); a bad URL is an error.
pub fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?.connect_lazy())
}
