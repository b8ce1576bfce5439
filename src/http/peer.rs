//! Who is on the other end of a loopback TCP connection: the owner of the client's socket, from
//! `/proc/net/tcp` / `/proc/net/tcp6` (the line whose local address is the peer's). Lets the
//! guard tell an agent's tokenless request from the operator's where no operator token is
//! configured.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};

/// A connection's peer: its address, and the owner of its socket once asked (looked up at most
/// once per connection: reading `/proc/net/tcp` costs time in proportion to the host's sockets,
/// and a request pays it only on a connection's first tokenless request).
#[derive(Clone, Debug)]
pub struct PeerConn {
    pub addr: SocketAddr,
    uid: Arc<OnceLock<Option<u32>>>,
}

impl PeerConn {
    /// The UID owning the peer's socket (loopback peers only).
    pub fn uid(&self) -> Option<u32> {
        *self.uid.get_or_init(|| {
            if self.addr.ip().is_loopback() {
                tcp_peer_uid(self.addr)
            } else {
                None
            }
        })
    }
}

impl Connected<IncomingStream<'_, NoDelay>> for PeerConn {
    fn connect_info(stream: IncomingStream<'_, NoDelay>) -> Self {
        PeerConn {
            addr: *stream.remote_addr(),
            uid: Default::default(),
        }
    }
}

/// The daemon's TCP listener: sets TCP_NODELAY on every connection (MCP answers go out as
/// several writes; with Nagle and the client's delayed ACK each waited ~40 ms, measured by
/// corral-bench).
pub struct NoDelay(pub TcpListener);

impl Listener for NoDelay {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        (stream, addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Listener::local_addr(&self.0)
    }
}

/// `/proc/net/tcp*` spells an address as native-endian 32-bit words in hex, then the port.
fn proc_addr(a: SocketAddr) -> String {
    let words: Vec<String> = match a.ip() {
        IpAddr::V4(v4) => vec![format!("{:08X}", u32::from_ne_bytes(v4.octets()))],
        IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    };
    format!("{}:{:04X}", words.concat(), a.port())
}

/// The UID owning the local socket `peer` (a connection from this host), if found.
pub fn tcp_peer_uid(peer: SocketAddr) -> Option<u32> {
    let table = if peer.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    find_uid(&std::fs::read_to_string(table).ok()?, peer)
}

fn find_uid(table: &str, peer: SocketAddr) -> Option<u32> {
    let want = proc_addr(peer);
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&want.as_str()))
            .then(|| f.get(7)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_of_a_loopback_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_conn, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(tcp_peer_uid(peer), Some(nix::unistd::geteuid().as_raw()));
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tcp_peer_uid(gone), None);
    }

    #[test]
    fn parses_the_table_format() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:A0B4 0100007F:1F41 01 00000000:00000000 00:00000000 00000000   999        0 12345 1 0 20 4 30 10 -1\n";
        let peer: SocketAddr = "127.0.0.1:41140".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(find_uid(t, peer), Some(999));
        }
        assert_eq!(find_uid(t, "127.0.0.1:1".parse().unwrap()), None);
    }
}
