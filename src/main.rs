//! `resilient-qa`: telemetry -> config -> validate -> App::build -> serve until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use resilient_qa::app::App;

// The service allocates small, short-lived buffers on every request; mimalloc serves them
// faster than glibc's allocator (see BENCHMARKS.md). Without transparent huge pages it
// keeps the idle footprint where glibc's is (about 10 MiB instead of 17).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use resilient_qa::config::{self, Config};
use resilient_qa::{demo, shutdown, telemetry};

const USAGE: &str = "\
usage: resilient-qa [--config PATH] [--demo]

  --config PATH   configuration file (default: config/default.toml, or $QA_CONFIG)
  --demo          serve with a simulated model provider behind both tiers (no API key
                  needed; a mild mix of failures shows retries and fallbacks live)
  --version       print the version
";

struct Args {
    config: Option<PathBuf>,
    demo: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        config: None,
        demo: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" => {
                args.config = Some(PathBuf::from(it.next().ok_or("--config needs a path")?));
            }
            s if s.starts_with("--config=") => {
                args.config = Some(PathBuf::from(&s["--config=".len()..]));
            }
            "--demo" => args.demo = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("resilient-qa {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resilient-qa: {e}");
            return ExitCode::from(2);
        }
    };
    let env = config::process_env();
    let mut config = match Config::load(args.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("resilient-qa: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&config.log);
    match &config.source {
        Some(path) => tracing::info!(file = %path.display(), "configuration file read"),
        None => tracing::warn!(
            file = config::DEFAULT_CONFIG_FILE,
            "no configuration file in the working directory; built-in defaults and the environment only (name one with --config or QA_CONFIG)"
        ),
    }

    let _sim = if args.demo {
        match demo::start(&mut config).await {
            Ok(sim) => Some(sim),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the demo simulator");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };

    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("resilient-qa: {e}");
            return match e {
                resilient_qa::app::BuildError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            };
        }
    };
    match app.run(shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
