//! Wire formats of the APIs this crate speaks or calls, typed once so the
//! simulator, the upstream client and the OpenAI-compatible routes agree on
//! every field.

pub mod openai;
