//! Who is on the other end of a loopback TCP connection: the owner of the client's socket, from
//! `/proc/net/tcp` / `/proc/net/tcp6` (the line whose local address is the peer's). Lets the
//! guard tell an agent's tokenless request from the operator's where no operator token is
//! configured.

use std::net::{IpAddr, SocketAddr};

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
