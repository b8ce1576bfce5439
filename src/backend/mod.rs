//! Backends start a process in a terminal and split it into three parts that the instance
//! task uses concurrently: [`Control`] (input, resize, signals), [`Output`] (a byte stream)
//! and [`ExitWaiter`] (resolves once, with the exit status).
//!
//! Both backends put the process in its own session (and so its own process group); signals
//! go to the group. Nothing here knows about instances, states or HTTP.

pub mod children;
pub mod pidfd;
pub mod pty;
pub mod tmux;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use portable_pty::MasterPty;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::model::{BackendKind, ExitStatus};
use pidfd::PidFd;
use tmux::Tmux;

/// Everything needed to start one process; computed by the supervisor beforehand.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The command line: the isolation shim, its plan file, then the program. The program's
    /// environment travels in the plan file, never here (tmux would keep it in its session
    /// environment, visible to `show-environment`).
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub cols: u16,
    pub rows: u16,
    /// tmux session name (the instance name).
    pub session: String,
}

pub struct Launched {
    pub pid: i32,
    pub control: Control,
    pub output: Output,
    pub exit: ExitWaiter,
}

pub enum Control {
    Pty {
        /// Behind a mutex only to make `Control` shareable across awaits (it is `!Sync`).
        master: std::sync::Mutex<Box<dyn MasterPty + Send>>,
        fd: AsyncFd<OwnedFd>,
    },
    Tmux {
        tmux: Tmux,
        session: String,
    },
}

pub enum Output {
    Pty(AsyncFd<OwnedFd>),
    Fifo {
        rx: pipe::Receiver,
        /// Our own write end keeps the FIFO from reporting EOF before tmux's `cat` opens it;
        /// it is dropped at cleanup so the reader then sees EOF once `cat` is gone.
        keepalive: Option<pipe::Sender>,
        path: PathBuf,
    },
}

pub struct ExitWaiter {
    pid: i32,
    pidfd: Option<PidFd>,
    how: ExitHow,
}

enum ExitHow {
    /// Our child: reaped with waitpid(pid). The std Child is kept so it is not dropped early,
    /// and the `Owned` token so the orphan reaper never collects it before we do.
    Child(
        #[allow(dead_code)] Box<dyn portable_pty::Child + Send + Sync>,
        #[allow(dead_code)] children::Owned,
    ),
    /// A tmux pane: tmux reaps it and keeps the status (remain-on-exit).
    Pane { tmux: Tmux, session: String },
}

/// Registers an owned fd with the Tokio reactor.
pub fn register_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // Safety: an OwnedFd is a valid open descriptor that it alone closes, and its
    // `as_raw_fd` returns the same descriptor for as long as the AsyncFd owns it.
    unsafe { Ok(AsyncFd::register(fd)?) }
}

/// Parses a polite-stop signal name.
pub fn parse_signal(name: &str) -> Option<Signal> {
    match name.trim_start_matches("SIG") {
        "TERM" => Some(Signal::SIGTERM),
        "HUP" => Some(Signal::SIGHUP),
        "INT" => Some(Signal::SIGINT),
        "QUIT" => Some(Signal::SIGQUIT),
        _ => None,
    }
}

/// Starts `spec` in the given backend. `fifo_dir` holds tmux output pipes.
pub async fn launch(
    backend: BackendKind,
    spec: &LaunchSpec,
    tmux: &Tmux,
    fifo_dir: &Path,
    fifo_name: &str,
) -> io::Result<Launched> {
    match backend {
        BackendKind::Pty => {
            let s = pty::spawn(spec)?;
            let pidfd = PidFd::open(s.pid).ok();
            Ok(Launched {
                pid: s.pid,
                control: Control::Pty {
                    master: std::sync::Mutex::new(s.master),
                    fd: s.write_fd,
                },
                output: Output::Pty(s.read_fd),
                exit: ExitWaiter {
                    pid: s.pid,
                    pidfd,
                    how: ExitHow::Child(s.child, s.owned),
                },
            })
        }
        BackendKind::Tmux => {
            let (rx, keepalive, path) = open_fifo(fifo_dir, fifo_name)?;
            let pid = match tmux.new_session(spec, &path).await {
                Ok(pid) => pid,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            Ok(tmux_parts(tmux, &spec.session, pid, rx, keepalive, path))
        }
    }
}

/// A FIFO for a pane's output, opened for reading, plus our own keep-alive write end.
fn open_fifo(dir: &Path, name: &str) -> io::Result<(pipe::Receiver, pipe::Sender, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let rx = pipe::OpenOptions::new().open_receiver(&path)?;
    let keepalive = pipe::OpenOptions::new().open_sender(&path)?;
    Ok((rx, keepalive, path))
}

fn tmux_parts(
    tmux: &Tmux,
    session: &str,
    pid: i32,
    rx: pipe::Receiver,
    keepalive: pipe::Sender,
    path: PathBuf,
) -> Launched {
    // ESRCH: it already exited and tmux reaped it; the pane status has the answer.
    let pidfd = PidFd::open(pid).ok();
    Launched {
        pid,
        control: Control::Tmux {
            tmux: tmux.clone(),
            session: session.to_string(),
        },
        output: Output::Fifo {
            rx,
            keepalive: Some(keepalive),
            path,
        },
        exit: ExitWaiter {
            pid,
            pidfd,
            how: ExitHow::Pane {
                tmux: tmux.clone(),
                session: session.to_string(),
            },
        },
    }
}

/// Takes over a live tmux pane left by a previous daemon: its output is piped into a new FIFO
/// (replacing the dead daemon's pipe) and its exit is watched through a new pidfd. The caller
/// has verified that `pid` is the recorded process.
pub async fn adopt_tmux(
    tmux: &Tmux,
    session: &str,
    pid: i32,
    fifo_dir: &Path,
    fifo_name: &str,
) -> io::Result<Launched> {
    let (rx, keepalive, path) = open_fifo(fifo_dir, fifo_name)?;
    if let Err(e) = tmux.repipe(session, &path).await {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(tmux_parts(tmux, session, pid, rx, keepalive, path))
}

impl Control {
    /// Types `text` (and Enter when asked) into the terminal.
    pub async fn send_text(&self, text: &str, enter: bool) -> io::Result<()> {
        match self {
            Control::Pty { fd, .. } => {
                pty::write_all(fd, text.as_bytes()).await?;
                if enter {
                    pty::write_all(fd, b"\r").await?;
                }
                Ok(())
            }
            Control::Tmux { tmux, session } => {
                if !text.is_empty() {
                    tmux.send_literal(session, text).await?;
                }
                if enter {
                    tmux.send_keys(session, &["Enter"]).await?;
                }
                Ok(())
            }
        }
    }

    /// Pastes `text` as one bracketed paste (the TUI sees a paste, not keystrokes, so newlines
    /// in the text do not submit it). Enter is pressed separately.
    pub async fn paste(&self, text: &str) -> io::Result<()> {
        match self {
            Control::Pty { fd, .. } => {
                let mut data = Vec::with_capacity(text.len() + 12);
                data.extend_from_slice(b"\x1b[200~");
                data.extend_from_slice(text.as_bytes());
                data.extend_from_slice(b"\x1b[201~");
                pty::write_all(fd, &data).await
            }
            Control::Tmux { tmux, session } => tmux.paste(session, text).await,
        }
    }

    /// Empties a TUI's multi-line input box of up to `lines` lines without submitting it:
    /// Ctrl-U (delete to the start of the line) and Backspace (join with the line above) per
    /// line. Both do nothing on an empty input, so this is safe when the box is already empty.
    pub async fn clear_input(&self, lines: usize) -> io::Result<()> {
        let n = lines.clamp(1, 2000);
        match self {
            Control::Pty { fd, .. } => pty::write_all(fd, &b"\x15\x7f".repeat(n)).await,
            Control::Tmux { tmux, session } => {
                let keys: Vec<&str> = ["C-u", "BSpace"].repeat(n);
                tmux.send_keys(session, &keys).await
            }
        }
    }

    /// The interrupt key: Ctrl-C through the terminal (the line discipline turns it into
    /// SIGINT for the foreground process group; a TUI may handle it itself).
    pub async fn interrupt(&self) -> io::Result<()> {
        match self {
            Control::Pty { fd, .. } => pty::write_all(fd, b"\x03").await,
            Control::Tmux { tmux, session } => tmux.send_keys(session, &["C-c"]).await,
        }
    }

    pub async fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        match self {
            Control::Pty { master, .. } => {
                let master = master.lock().unwrap_or_else(|p| p.into_inner());
                pty::resize(master.as_ref(), cols, rows)
            }
            Control::Tmux { tmux, session } => tmux.resize(session, cols, rows).await,
        }
    }

    /// The visible screen plus history, for backends that keep one (tmux).
    pub async fn screen(&self, lines: u32) -> Option<String> {
        match self {
            Control::Pty { .. } => None,
            Control::Tmux { tmux, session } => tmux.capture(session, lines).await.ok(),
        }
    }

    /// Releases backend resources after the process ended (kills the dead tmux session).
    pub async fn cleanup(&self) -> io::Result<()> {
        match self {
            Control::Pty { .. } => Ok(()),
            Control::Tmux { tmux, session } => tmux.kill_session(session).await,
        }
    }

    pub fn tmux_session(&self) -> Option<&str> {
        match self {
            Control::Pty { .. } => None,
            Control::Tmux { session, .. } => Some(session),
        }
    }
}

impl Output {
    /// Reads the next chunk; `Ok(0)` at end of stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Output::Pty(fd) => pty::read(fd, buf).await,
            Output::Fifo { rx, .. } => rx.read(buf).await,
        }
    }

    /// After the process ended and the backend was cleaned up: stop keeping the stream open.
    pub fn close_writer(&mut self) {
        if let Output::Fifo { keepalive, .. } = self {
            keepalive.take();
        }
    }

    /// Reads what is left, until end of stream or `deadline`.
    pub async fn drain(&mut self, deadline: Duration, mut sink: impl FnMut(&[u8])) {
        let mut buf = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(deadline, async {
            loop {
                match self.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink(&buf[..n]),
                }
            }
        })
        .await;
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Output::Fifo { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl ExitWaiter {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Resolves when the process has ended, with its status.
    pub async fn wait(&self) -> io::Result<ExitStatus> {
        if let Some(pidfd) = &self.pidfd {
            pidfd.exited().await?;
        }
        match &self.how {
            ExitHow::Child(..) => pty::reap(self.pid).await,
            // A zombie pane still carries its status; once reaped, tmux has it. Without a
            // pidfd the pane was already gone at launch.
            ExitHow::Pane { tmux, session } => match pidfd::zombie_status(self.pid) {
                Some(status) if self.pidfd.is_some() => Ok(status),
                _ => tmux.dead_status(session).await,
            },
        }
    }
}
