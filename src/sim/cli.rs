//! Command line of the `upstream-sim` binary, kept in the library so the
//! binary stays a one-liner and the parsing is testable.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::net::TcpListener;

use super::SimServer;
use super::model::{AnswerStyle, Outcome, SimConfig, parse_mix};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";

pub const USAGE: &str = "\
upstream-sim: an OpenAI-compatible chat-completions server whose failures are simulated

USAGE:
    upstream-sim [OPTIONS]

OPTIONS:
    --listen ADDR          IP:PORT to listen on (default 127.0.0.1:9090, env SIM_LISTEN)
    --config FILE          TOML configuration (seed, [default], [models.\"NAME\"])
    --latency-ms N         default behaviour: fixed latency in milliseconds
    --jitter-ms N          default behaviour: extra random latency 0..=N ms
    --seed N               seed of the random outcome draws
    --answers STYLE        how ok answers read: echo (the default: [MODEL] simulated
                           answer to: QUESTION) or demo (a simulated answer in the
                           question's language, Chinese or English)
    --mix SPEC             default behaviour: failure mix, e.g. 503=0.5,hang=0.1
                           (outcomes: ok hang reset malformed empty null_content
                           no_choices huge redirect content_parts cut stall_first
                           stall stream_error or a status 400..=599; the rest is ok)
    --retry-after-secs N   default behaviour: Retry-After: N on 429/503 responses
    --retry-after VALUE    default behaviour: Retry-After on 429/503 sent verbatim,
                           e.g. 18446744073709551615, +3 or an HTTP date (wins
                           over --retry-after-secs)
    --retry-after-ms N     default behaviour: retry-after-ms: N on 429/503 responses
    --huge-body-bytes N    default behaviour: content size of a `huge` answer
                           (default 52428800, 50 MiB; sent chunked)
    --redirect-location URL
                           default behaviour: Location of a `redirect` (307) answer
                           (default: this simulator's /redirected/v1/chat/completions,
                           which answers a completion from the redirect target)
    --stream-piece-chars N default behaviour: characters per streamed piece (default 4)
    --stream-interval-ms N default behaviour: delay between streamed pieces (default 10)
    --stream-cut-after N   default behaviour: pieces sent before a cut, stall or
                           stream_error (default 3)
    --script LIST          default behaviour: outcomes played first, e.g. 503,503,ok
    -h, --help             print this help

Command-line values override the configuration file.
Control API: GET /control, GET /control/calls, PUT /control/models/{model},
PUT /control/default, POST /control/reset. A behaviour is JSON with the keys
latency_ms, jitter_ms, mix, script, retry_after_secs, retry_after,
retry_after_ms, huge_body_bytes, redirect_location, stream_piece_chars,
stream_interval_ms, stream_cut_after. The last request's Authorization is
reported redacted (`Bearer ***`).

A request with \"stream\": true is answered with server-sent events
(chat.completion.chunk, then data: [DONE]); cut closes the connection after
N pieces, stall_first sends the headers and nothing else, stall stops after
N pieces with the connection open, stream_error sends an error event after
N pieces. Outside a stream, cut is a reset, stall_first and stall hang,
stream_error is a 500.
";

/// Everything the binary needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct CliOptions {
    pub listen: SocketAddr,
    pub config: SimConfig,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
// Built once per process: the size of the `Run` variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum CliCommand {
    Run(CliOptions),
    Help,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a non-negative integer"))
}

/// Parses the arguments (without the program name). `env_listen` is the
/// value of `SIM_LISTEN`, used when `--listen` is absent. Reads the
/// `--config` file.
pub fn parse_args<I>(args: I, env_listen: Option<String>) -> Result<CliCommand, String>
where
    I: IntoIterator<Item = String>,
{
    let mut listen = None;
    let mut config_path: Option<PathBuf> = None;
    let mut latency_ms = None;
    let mut jitter_ms = None;
    let mut seed = None;
    let mut answers = None;
    let mut mix = None;
    let mut retry_after_secs = None;
    let mut retry_after = None;
    let mut retry_after_ms = None;
    let mut huge_body_bytes = None;
    let mut redirect_location = None;
    let mut script = None;
    let mut stream_piece_chars = None;
    let mut stream_interval_ms = None;
    let mut stream_cut_after = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(CliCommand::Help);
        }
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let known = [
            "--listen",
            "--config",
            "--latency-ms",
            "--jitter-ms",
            "--seed",
            "--answers",
            "--mix",
            "--retry-after-secs",
            "--retry-after",
            "--retry-after-ms",
            "--huge-body-bytes",
            "--redirect-location",
            "--script",
            "--stream-piece-chars",
            "--stream-interval-ms",
            "--stream-cut-after",
        ];
        if !known.contains(&flag.as_str()) {
            return Err(format!("unknown argument {arg:?} (see --help)"));
        }
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))?,
        };
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--config" => config_path = Some(PathBuf::from(value)),
            "--latency-ms" => latency_ms = Some(number::<u64>(&flag, &value)?),
            "--jitter-ms" => jitter_ms = Some(number::<u64>(&flag, &value)?),
            "--seed" => seed = Some(number::<u64>(&flag, &value)?),
            "--answers" => {
                answers = Some(match value.as_str() {
                    "echo" => AnswerStyle::Echo,
                    "demo" => AnswerStyle::Demo,
                    other => return Err(format!("--answers: {other:?}, expected echo or demo")),
                })
            }
            "--retry-after-secs" => retry_after_secs = Some(number::<u64>(&flag, &value)?),
            "--retry-after" => retry_after = Some(value),
            "--retry-after-ms" => retry_after_ms = Some(number::<u64>(&flag, &value)?),
            "--huge-body-bytes" => huge_body_bytes = Some(number::<u64>(&flag, &value)?),
            "--redirect-location" => redirect_location = Some(value),
            "--stream-piece-chars" => stream_piece_chars = Some(number::<usize>(&flag, &value)?),
            "--stream-interval-ms" => stream_interval_ms = Some(number::<u64>(&flag, &value)?),
            "--stream-cut-after" => stream_cut_after = Some(number::<usize>(&flag, &value)?),
            "--mix" => mix = Some(parse_mix(&value).map_err(|e| format!("--mix: {e}"))?),
            "--script" => {
                let outcomes = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::parse::<Outcome>)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--script: {e}"))?;
                script = Some(outcomes);
            }
            _ => return Err(format!("unknown argument {arg:?} (see --help)")),
        }
    }

    let listen_text = listen
        .or(env_listen.filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_text
        .trim()
        .parse()
        .map_err(|_| format!("listen address {listen_text:?} is not IP:PORT"))?;

    let mut config = match config_path {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
            SimConfig::from_toml_str(&text)
                .map_err(|e| format!("bad config {}: {e}", path.display()))?
        }
        None => SimConfig::default(),
    };
    if let Some(v) = latency_ms {
        config.default.latency_ms = v;
    }
    if let Some(v) = jitter_ms {
        config.default.jitter_ms = v;
    }
    if let Some(v) = seed {
        config.seed = v;
    }
    if let Some(v) = answers {
        config.answers = v;
    }
    if let Some(v) = mix {
        config.default.mix = v;
    }
    if let Some(v) = retry_after_secs {
        config.default.retry_after_secs = Some(v);
    }
    if let Some(v) = retry_after {
        config.default.retry_after = Some(v);
    }
    if let Some(v) = retry_after_ms {
        config.default.retry_after_ms = Some(v);
    }
    if let Some(v) = huge_body_bytes {
        config.default.huge_body_bytes = Some(v);
    }
    if let Some(v) = redirect_location {
        config.default.redirect_location = Some(v);
    }
    if let Some(v) = script {
        config.default.script = v;
    }
    if let Some(v) = stream_piece_chars {
        config.default.stream_piece_chars = Some(v);
    }
    if let Some(v) = stream_interval_ms {
        config.default.stream_interval_ms = Some(v);
    }
    if let Some(v) = stream_cut_after {
        config.default.stream_cut_after = Some(v);
    }
    config.validate()?;
    Ok(CliCommand::Run(CliOptions { listen, config }))
}

/// Entry point of the binary: parses `args` (without the program name),
/// serves until SIGINT/SIGTERM, and returns the process exit code (2 for bad
/// usage or configuration, 1 if the address cannot be bound).
pub async fn main(args: Vec<OsString>) -> ExitCode {
    let args = match args
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| format!("argument {a:?} is not UTF-8"))
        })
        .collect::<Result<Vec<String>, String>>()
    {
        Ok(args) => args,
        Err(e) => return usage_error(&e),
    };
    let options = match parse_args(args, std::env::var("SIM_LISTEN").ok()) {
        Ok(CliCommand::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(CliCommand::Run(options)) => options,
        Err(e) => return usage_error(&e),
    };

    // Handlers first: a SIGTERM that arrives once the listening line is out (a
    // test or a supervisor may send it at once) must shut down cleanly, not kill.
    let stop = shutdown_signal();

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Ignored error: a subscriber may already be installed (e.g. in tests).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();

    let listener = match TcpListener::bind(options.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("upstream-sim: cannot listen on {}: {e}", options.listen);
            return ExitCode::FAILURE;
        }
    };
    let seed = options.config.seed;
    let server = match SimServer::start(listener, options.config).await {
        Ok(server) => server,
        Err(e) => return usage_error(&e.to_string()),
    };
    tracing::info!(
        "upstream-sim listening on {} (seed {seed}); every failure it returns is SIMULATED fault injection, not a real provider error",
        server.base_url()
    );
    stop.await;
    tracing::info!("upstream-sim shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("upstream-sim: {message}");
    eprintln!("run `upstream-sim --help` for usage");
    ExitCode::from(2)
}

/// Registers the SIGINT and SIGTERM handlers now and returns a future that
/// completes on the first of them. (`tokio::signal::ctrl_c` and a `signal`
/// made inside an async block only register when first polled, leaving a
/// window in which the default action kills the process.)
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            // Without a handler for one of them, only the other can stop us;
            // don't exit at once.
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
