//! Which hub node (`--url`, given once per node) a socket or a REST request goes to, and
//! which failures mean that the node itself is gone, so that the next attempt goes to the next
//! node in the list instead.
//!
//! * Sockets: socket `k` (its index in the whole run: shops, then drivers, then buyers, across
//!   all shards) starts on node `k mod n`; when its node dies it reconnects to the next node.
//! * REST: round-robin per request over the nodes; a request that got no answer because the
//!   node is gone is sent once more, at once, to the next node — see [`rest_failover`].
//!
//! With one `--url` none of this changes anything: the next node is the same node, and no
//! failover is counted.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::ProtocolError;

/// The node socket `k` (its index in the whole run) opens its first connection to.
pub fn first_node(k: usize, nodes: usize) -> usize {
    k % nodes.max(1)
}

/// The node after `i`, wrapping around.
pub fn next_node(i: usize, nodes: usize) -> usize {
    (i + 1) % nodes.max(1)
}

/// Round-robin over the nodes, one step per call.
#[derive(Debug, Default)]
pub struct RoundRobin(AtomicUsize);

impl RoundRobin {
    pub fn pick(&self, nodes: usize) -> usize {
        self.0.fetch_add(1, Relaxed) % nodes.max(1)
    }
}

/// An I/O error that says the peer is gone: refused, reset, aborted, or closed under us.
pub fn io_down(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}

/// A WebSocket error that says the node is gone: an I/O error as in [`io_down`], or the TCP
/// connection ended without a closing handshake.
pub fn ws_down(e: &WsError) -> bool {
    match e {
        WsError::Io(io) => io_down(io.kind()),
        WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::HandshakeIncomplete,
        ) => true,
        _ => false,
    }
}

/// A close code that says the node is going away: 1001, which the hub sends when it shuts
/// down. Every other code (1000, 4000, 4401, 4408, 4409, 4429) is about this socket, not the
/// node, and the socket reconnects to the same node.
pub fn close_down(code: u16) -> bool {
    code == 1001
}

/// May a REST request that got no answer (`code`: `connect`, `transport` or `timeout`) be
/// sent once more to the next node? When the connection could not be made the request was
/// never sent, so always; when it broke later, only if sending it twice is harmless (a GET, or
/// a request carrying an `Idempotency-Key`). A timeout is not a dead node: never.
pub fn rest_failover(code: &str, idempotent: bool) -> bool {
    match code {
        "connect" => true,
        "transport" => idempotent,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_spread_round_robin_and_fail_over_in_list_order() {
        let firsts: Vec<usize> = (0..7).map(|k| first_node(k, 3)).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2, 0]);
        // a socket whose node keeps dying visits every node, in list order, then starts over
        let mut at = first_node(4, 3);
        let mut visited = vec![at];
        for _ in 0..4 {
            at = next_node(at, 3);
            visited.push(at);
        }
        assert_eq!(visited, [1, 2, 0, 1, 2]);
        // one node: always that node
        assert_eq!((first_node(5, 1), next_node(0, 1)), (0, 0));
    }

    #[test]
    fn rest_requests_go_round_robin() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..5).map(|_| rr.pick(2)).collect();
        assert_eq!(picks, [0, 1, 0, 1, 0]);
        let one = RoundRobin::default();
        assert!((0..3).all(|_| one.pick(1) == 0));
    }

    #[test]
    fn which_failures_mean_the_node_is_gone() {
        assert!(io_down(ErrorKind::ConnectionRefused));
        assert!(io_down(ErrorKind::ConnectionReset));
        assert!(!io_down(ErrorKind::TimedOut));
        assert!(
            !io_down(ErrorKind::AddrNotAvailable),
            "our own source ports ran out"
        );
        assert!(ws_down(&WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
        )));
        assert!(ws_down(&WsError::Io(ErrorKind::ConnectionReset.into())));
        assert!(!ws_down(&WsError::ConnectionClosed));
        assert!(close_down(1001));
        for code in [1000, 4000, 4401, 4408, 4409, 4429] {
            assert!(!close_down(code), "{code}");
        }
    }

    #[test]
    fn which_rest_requests_fail_over() {
        assert!(
            rest_failover("connect", false),
            "never sent: safe to resend"
        );
        assert!(rest_failover("connect", true));
        assert!(rest_failover("transport", true));
        assert!(!rest_failover("transport", false), "may have been applied");
        assert!(!rest_failover("timeout", true));
    }
}
