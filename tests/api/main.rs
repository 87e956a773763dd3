//! Black-box tests of the service over HTTP, against a real `redis-server` and the
//! simulator. One binary, one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod ask;
mod boundaries;
mod browser;
mod cache;
mod clients;
mod deadline;
mod demo;
mod errors;
mod faq;
mod fuzz;
mod helpers;
mod limits;
mod load_balancer;
mod metrics;
mod openai;
mod process;
mod redis_boundaries;
mod redis_outage;
mod replicas;
mod resilience;
mod retries;
mod seed_experiment;
mod streaming;
mod topologies;
mod ui;
mod upstream_boundaries;
