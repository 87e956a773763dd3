//! resilient-qa: an HTTP service that answers customer-service questions and always
//! answers. `POST /ask` walks the pipeline in `pipeline`: fresh cache, primary model,
//! secondary model, canned answers, stale cache, default reply.

pub mod app;
pub mod clients;
pub mod config;
pub mod demo;
pub mod error;
pub mod faq;
pub mod guards;
pub mod limits;
pub mod middleware;
pub mod pipeline;
pub mod redact;
pub mod resilience;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod state;
pub mod stats;
pub mod telemetry;
pub mod wire;
