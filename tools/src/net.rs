//! Sockets the tools and tests open in a particular way.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// A TCP connection to `to` from the local address `from` (port 0), made
/// within `timeout`. Any 127.x address is local, so on one host this is how
/// a connection appears to come from member N (127.0.0.N), or from a client
/// that per-address limits tell apart. An unspecified `from` (0.0.0.0)
/// leaves the choice to the kernel.
pub fn connect_from(from: IpAddr, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    if !from.is_unspecified() {
        socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
    }
    socket.connect_timeout(&SockAddr::from(to), timeout)?;
    Ok(socket.into())
}
