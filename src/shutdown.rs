//! The shutdown signal: SIGTERM or SIGINT (Ctrl-C).

use std::future::Future;

/// A future that completes on the first SIGTERM or SIGINT. The handlers are installed
/// when this is called, not when the future is first polled, so a signal that arrives
/// while the service is still starting is not lost (nor does it kill the process with
/// the default action). Must be called inside the Tokio runtime.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, signal = name, "cannot listen for the signal");
                None
            }
        };
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(int.take()) => tracing::info!(signal = "SIGINT", "shutdown signal received"),
                _ = wait(term.take()) => tracing::info!(signal = "SIGTERM", "shutdown signal received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(signal = "SIGINT", "shutdown signal received");
    }
}
