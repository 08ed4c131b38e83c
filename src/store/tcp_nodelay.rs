//! Turns off Nagle's algorithm on the TCP connections of the PostgreSQL pool.
//!
//! sqlx 0.9.0 opens its sockets without `TCP_NODELAY` (sqlx issue #4335; fixed upstream after
//! that release). A request larger than one TCP segment — every append of a few hundred tokens —
//! then has its last segment held back until the server's delayed ACK, about 40 ms, which turns
//! a millisecond append into a 50 ms one. sqlx gives no access to its socket, so after each new
//! connection we ask the server which client port it sees and set the option on the socket of
//! this process with that local port. Behind a proxy or NAT the ports differ, nothing matches and
//! nothing changes. Remove this module once the sqlx in use sets the option itself.

use sqlx::PgConnection;

/// Sets `TCP_NODELAY` on the socket of `conn`, when it is a direct TCP connection.
pub(crate) async fn apply(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let (client_port, server_port): (Option<i32>, Option<i32>) =
        sqlx::query_as("SELECT inet_client_port(), inet_server_port()")
            .fetch_one(&mut *conn)
            .await?;
    // NULL over a Unix socket, where there is no Nagle to turn off.
    if let (Some(local), Some(peer)) = (client_port, server_port)
        && let (Ok(local), Ok(peer)) = (u16::try_from(local), u16::try_from(peer))
    {
        set_on_socket(local, peer);
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn set_on_socket(local_port: u16, peer_port: u16) {
    use std::os::fd::{BorrowedFd, RawFd};

    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in fds.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only queried and given a socket option, never closed or
        // read. Should another thread close it meanwhile, the calls below fail (EBADF/ENOTSOCK)
        // or, if the number was reused, find a socket whose ports do not match.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let (Ok(local), Ok(peer)) = (sock.local_addr(), sock.peer_addr()) else {
            continue;
        };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
            continue;
        };
        if local.port() == local_port && peer.port() == peer_port {
            if let Err(e) = sock.set_tcp_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on a PostgreSQL connection");
            }
            return;
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn set_on_socket(_local_port: u16, _peer_port: u16) {}
