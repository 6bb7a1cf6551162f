//! spate's library: the DataStream API, job graphs, configuration, the embedded
//! MiniCluster and the built-in jobs. The `spate` binary is a thin CLI over it; a user
//! program links it to define its own jobs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod checkpoint;
pub mod cli;
mod cli_client;
pub mod cluster;
pub mod config;
pub mod graph;
pub mod ha;
pub mod jobs;
pub mod metrics;
pub mod minicluster;
pub mod rest;
pub mod restart;
pub mod rpc;
pub mod security;
pub mod sql;
pub mod sql_client;
pub mod storage;
pub mod web;

pub use spate_dataplane as dataplane;
