//! The HTTP endpoints, one file per group.

pub mod admin;
pub mod answer;
pub mod ask;
pub mod body;
pub mod health;
pub mod metrics;
pub mod openai;
pub mod ui;
