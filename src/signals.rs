//! The daemon's own signal handling: the first SIGTERM, SIGINT or SIGHUP starts an orderly
//! shutdown; a second one exits at once. (SIGHUP: a closed terminal or a PID-1 parent passing
//! it on; corral has no reload, and dying without stopping the instances would be worse.)

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub fn spawn_handler(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => "SIGHUP",
            };
            seen += 1;
            if seen == 1 {
                warn!(signal = name, "shutting down (send again to exit at once)");
                shutdown.cancel();
            } else {
                warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
