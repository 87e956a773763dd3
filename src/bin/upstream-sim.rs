//! `upstream-sim`: the fault-injecting OpenAI-compatible simulator as a
//! standalone server. All logic lives in `resilient_qa::sim`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    resilient_qa::sim::cli::main(std::env::args_os().skip(1).collect()).await
}
