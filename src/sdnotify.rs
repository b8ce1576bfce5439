//! systemd's readiness protocol (`sd_notify(3)`): when `NOTIFY_SOCKET` is set, send
//! newline-separated `KEY=VALUE` assignments as one datagram to that unix socket.
//!
//! corral sends `READY=1` once the HTTP server listens (and `<run_dir>/daemon.json` exists)
//! and `STOPPING=1` when an orderly shutdown starts, which is what `Type=notify` needs.
//! The socket is a path, or an abstract socket name written with a leading `@`.
//!
//! Under systemd corral is not PID 1, so the sender is the main process (`NotifyAccess=main`).
//! When a PID-1 corral runs under a notify-aware container manager, the daemon child sends:
//! such a manager has to accept notifications from any process of the container.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd (or any supervisor speaking the protocol) sets for its service.
pub const ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET`. `Ok(false)` when the variable is not
/// set (not run under a notify-aware supervisor), `Ok(true)` once sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(ENV) {
        Some(path) if !path.is_empty() => send_to(&path, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the socket named by `socket` (a path, or `@name` for an abstract one).
pub fn send_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let addr = address(socket)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other(format!(
            "short write to {ENV}: {sent} of {} bytes",
            state.len()
        )));
    }
    Ok(())
}

/// Parses `$NOTIFY_SOCKET`: an absolute path, or `@name` for the abstract namespace.
pub fn address(socket: &OsStr) -> io::Result<SocketAddr> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        Some(b'/') => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{ENV}={:?}: expected an absolute path or @abstract-name",
                socket.to_string_lossy()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("corral-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn rejects_relative_and_empty_addresses() {
        assert!(address(OsStr::new("relative/notify.sock")).is_err());
        assert!(address(OsStr::new("")).is_err());
        assert!(address(OsStr::new("/run/systemd/notify")).is_ok());
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send_to(dir.path().join("absent.sock").as_os_str(), "READY=1").is_err());
    }
}
