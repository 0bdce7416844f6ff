//! chat-engine: a multi-tenant chat engine served as a gRPC API.
//!
//! Layers: `grpc` (transport adapters) → `domain` (rules) → `storage` (diesel, always scoped
//! to a tenant); `auth` turns credentials into a `tenancy::Principal`; `error` holds the one
//! error type and its one mapping to `tonic::Status`.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod loadtest;
pub mod memory;
pub mod pb;
pub mod pgcluster;
pub mod realtime;
pub mod storage;
pub mod talk;
pub mod tenancy;
