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
usage: resilient-qa [--config PATH] [--demo [--demo-sim-port N]]

  --config PATH         configuration file (default: config/default.toml, or $QA_CONFIG)
  --demo                serve with a simulated model provider behind both tiers (no API
                        key needed; a mild mix of failures shows retries and fallbacks
                        live). Simulated answers are cached under their own key prefix
                        (qa:demo:v1:), apart from real ones. A banner on stderr gives the
                        service URL and the simulator's control URL.
  --demo-sim-port N     port of the demo's simulator on 127.0.0.1 (default 8081; 0 picks
                        a free one); its control API is http://127.0.0.1:N/control
  --version             print the version
";

struct Args {
    config: Option<PathBuf>,
    demo: bool,
    demo_sim_port: Option<u16>,
}

fn port(value: &str) -> Result<u16, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("--demo-sim-port: {value:?} is not a port number (0..=65535)"))
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        config: None,
        demo: false,
        demo_sim_port: None,
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
            "--demo-sim-port" => {
                args.demo_sim_port = Some(port(&it.next().ok_or("--demo-sim-port needs a port")?)?);
            }
            s if s.starts_with("--demo-sim-port=") => {
                args.demo_sim_port = Some(port(&s["--demo-sim-port=".len()..])?);
            }
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
    if args.demo_sim_port.is_some() && !args.demo {
        return Err("--demo-sim-port only applies with --demo".to_owned());
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
    // Installed now: a SIGTERM during start-up then drains instead of killing.
    let shutdown = shutdown::signal();
    match &config.source {
        Some(path) => tracing::info!(file = %path.display(), "configuration file read"),
        None => tracing::warn!(
            file = config::DEFAULT_CONFIG_FILE,
            "no configuration file in the working directory; built-in defaults and the environment only (name one with --config or QA_CONFIG)"
        ),
    }

    let sim = if args.demo {
        let port = args.demo_sim_port.unwrap_or(demo::DEFAULT_SIM_PORT);
        match demo::start(&mut config, port).await {
            Ok(sim) => Some(sim),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the demo");
                eprintln!("resilient-qa: {e}");
                return match e {
                    demo::DemoError::SimPort { .. } => ExitCode::from(2),
                    demo::DemoError::Sim(_) => ExitCode::FAILURE,
                };
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
    if let Some(sim) = &sim {
        match app.local_addr() {
            Ok(addr) => demo::announce(addr, sim),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the bound address for the demo banner")
            }
        }
    }
    match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
