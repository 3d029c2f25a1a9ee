//! The slow path's UDP sockets: kernel receive timestamps (SO_TIMESTAMPNS) and the request's
//! destination address (IP_PKTINFO), so that a reply leaves from the address the client asked.

use std::{
    io::{self, IoSlice, IoSliceMut},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
};

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    SockaddrIn, SockaddrIn6, SockaddrStorage, TimestampingFlag, sockopt,
};
use tokio::io::Interest;

use super::clock::{realtime_ns, timespec_ns};

mod batch;

pub use batch::{Batch, Datagram};

/// A UDP socket bound to `address`, after `configure` set its options. An IPv6 one is
/// IPv6-only, so that IPv4 can have a socket of its own on the same port.
pub fn bind_udp(
    address: SocketAddr,
    configure: impl FnOnce(&OwnedFd) -> nix::Result<()>,
) -> io::Result<std::net::UdpSocket> {
    Ok(std::net::UdpSocket::from(bound(address, SockType::Datagram, configure)?))
}

/// A listening TCP socket on `address`, IPv6-only as [`bind_udp`]'s.
pub fn bind_tcp_listener(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let fd =
        bound(address, SockType::Stream, |fd| socket::setsockopt(fd, sockopt::ReuseAddr, &true))?;
    socket::listen(&fd, socket::Backlog::new(128)?)?;
    Ok(std::net::TcpListener::from(fd))
}

/// How long an accept loop rests after `error`, if it must: a shortage of descriptors or
/// memory lasts until connections close, and accepting again at once would spin a core. Other
/// errors concern one connection only.
pub fn accept_backoff(error: &io::Error) -> Option<std::time::Duration> {
    let shortage = matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    shortage.then_some(std::time::Duration::from_millis(100))
}

fn bound(
    address: SocketAddr,
    kind: SockType,
    configure: impl FnOnce(&OwnedFd) -> nix::Result<()>,
) -> io::Result<OwnedFd> {
    let family = match address {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(family, kind, SockFlag::SOCK_CLOEXEC, None)?;
    configure(&fd)?;
    match address {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?;
        }
    }
    Ok(fd)
}

/// A datagram on a local (Unix) socket: its length, the sender's socket path (None for a
/// sender whose socket has no name, which cannot be answered), and the sender's user as the
/// kernel vouches for it (None where it did not say).
pub struct LocalDatagram {
    pub len: usize,
    pub sender: Option<std::path::PathBuf>,
    pub sender_uid: Option<u32>,
}

/// Makes the kernel say who sent each datagram on `socket` (SO_PASSCRED).
pub fn pass_credentials(socket: &std::os::unix::net::UnixDatagram) -> io::Result<()> {
    socket::setsockopt(socket, sockopt::PassCred, &true)?;
    Ok(())
}

/// Receives a datagram on a local socket set up by [`pass_credentials`], into `buffer`.
pub fn recv_local(
    socket: &std::os::unix::net::UnixDatagram,
    buffer: &mut [u8],
) -> io::Result<LocalDatagram> {
    let mut control = nix::cmsg_space!(libc::ucred);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = socket::recvmsg::<socket::UnixAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )?;
    let sender_uid = message.cmsgs()?.find_map(|cmsg| match cmsg {
        ControlMessageOwned::ScmCredentials(credentials) => Some(credentials.uid()),
        _ => None,
    });
    // An unnamed sender's address is empty (no family even), which nix's UnixAddr::path
    // refuses with a panic: only a name longer than the family is read.
    let family_len = size_of::<libc::sa_family_t>() as u32;
    let sender = message
        .address
        .filter(|address| socket::SockaddrLike::len(address) > family_len)
        .and_then(|address| address.path().map(ToOwned::to_owned));
    Ok(LocalDatagram { len: message.bytes, sender, sender_uid })
}

/// Sends `bytes` to the local socket at `path` without waiting: a peer that does not read
/// (its queue full) gets nothing rather than stalling the sender.
pub fn send_local_now(
    socket: &std::os::unix::net::UnixDatagram,
    bytes: &[u8],
    path: &std::path::Path,
) -> io::Result<()> {
    let address = socket::UnixAddr::new(path)?;
    socket::sendto(socket.as_raw_fd(), bytes, &address, MsgFlags::MSG_DONTWAIT)?;
    Ok(())
}

pub struct NtpSocket {
    socket: tokio::net::UdpSocket,
}

impl NtpSocket {
    /// Binds `address` (v6 sockets are v6-only; IPv4 has its own socket).
    pub fn bind(address: SocketAddr) -> io::Result<Self> {
        Self::from_std(Self::bind_std(address)?)
    }

    /// Binds `address` as `bind` does, before the runtime exists (a privileged port is bound
    /// before privileges are dropped, and the runtime's threads started).
    /// Several bound to one address share its datagrams (SO_REUSEPORT, spread by the kernel
    /// by the client's address and port), one for each thread of the slow path.
    pub fn bind_std(address: SocketAddr) -> io::Result<std::net::UdpSocket> {
        let socket = bind_udp(address, |fd| {
            socket::setsockopt(fd, sockopt::ReusePort, &true)?;
            socket::setsockopt(fd, sockopt::ReceiveTimestampns, &true)?;
            match address {
                SocketAddr::V4(_) => socket::setsockopt(fd, sockopt::Ipv4PacketInfo, &true),
                SocketAddr::V6(_) => socket::setsockopt(fd, sockopt::Ipv6RecvPacketInfo, &true),
            }
        })?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// A socket from `bind_std`, in the runtime.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<Self> {
        Ok(Self { socket: tokio::net::UdpSocket::from_std(socket)? })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits for the next datagram.
    pub async fn recv(&self, buffer: &mut [u8]) -> io::Result<Datagram> {
        self.socket
            .async_io(Interest::READABLE, || batch::receive_one(self.socket.as_raw_fd(), buffer))
            .await
    }

    /// Waits for datagrams and takes those waiting, as many as `batch` holds, into it.
    pub async fn recv_batch(&self, batch: &mut Batch) -> io::Result<usize> {
        self.socket.async_io(Interest::READABLE, || batch.receive(self.socket.as_raw_fd())).await
    }

    /// Sends at once, without waiting for the runtime to learn the socket is writable (a new
    /// socket's first readiness takes a turn of the reactor): returns the CLOCK_REALTIME instant
    /// just before the datagram was handed to the kernel.
    pub async fn send_now(&self, datagram: &[u8], to: SocketAddr) -> io::Result<u64> {
        let sent = realtime_ns();
        match send(self.socket.as_raw_fd(), datagram, to, None) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                self.send(datagram, to, None).await?;
                Ok(realtime_ns())
            }
            result => result.map(|()| sent),
        }
    }

    /// Asks the kernel to timestamp each datagram as the driver takes it (SO_TIMESTAMPING,
    /// software): a truer send time than a clock reading before the system call.
    pub fn enable_transmit_timestamps(&self) -> io::Result<()> {
        let flags = TimestampingFlag::SOF_TIMESTAMPING_TX_SOFTWARE
            | TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE
            | TimestampingFlag::SOF_TIMESTAMPING_OPT_TSONLY;
        socket::setsockopt(&self.socket, sockopt::Timestamping, &flags)?;
        Ok(())
    }

    /// The kernel's timestamp (CLOCK_REALTIME ns) of a datagram sent, from the socket's error
    /// queue, if one is there.
    pub fn transmit_timestamp(&self) -> Option<u64> {
        // The timestamps (SO_TIMESTAMPING's, and SO_TIMESTAMPNS's too), and the error report
        // that carries them (with an address).
        let mut control = nix::cmsg_space!(
            socket::Timestamps,
            nix::sys::time::TimeSpec,
            libc::sock_extended_err,
            libc::sockaddr_in6
        );
        let mut nothing = [IoSliceMut::new(&mut [])];
        let message = socket::recvmsg::<SockaddrStorage>(
            self.socket.as_raw_fd(),
            &mut nothing,
            Some(&mut control),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        )
        .ok()?;
        message.cmsgs().ok()?.find_map(|cmsg| match cmsg {
            ControlMessageOwned::ScmTimestampsns(stamps) => {
                let ns = timespec_ns(stamps.system.tv_sec(), stamps.system.tv_nsec());
                (ns != 0).then_some(ns)
            }
            _ => None,
        })
    }

    /// Sends `reply` to `to`, from the address and interface `from` when known.
    pub async fn send(
        &self,
        reply: &[u8],
        to: SocketAddr,
        from: Option<(IpAddr, u32)>,
    ) -> io::Result<()> {
        self.socket
            .async_io(Interest::WRITABLE, || send(self.socket.as_raw_fd(), reply, to, from))
            .await
    }
}

fn send(fd: i32, reply: &[u8], to: SocketAddr, from: Option<(IpAddr, u32)>) -> io::Result<()> {
    let iov = [IoSlice::new(reply)];
    let v4_info;
    let v6_info;
    let cmsgs: Vec<ControlMessage<'_>> = match from {
        Some((IpAddr::V4(from), interface)) => {
            v4_info = libc::in_pktinfo {
                ipi_ifindex: interface as i32,
                ipi_spec_dst: libc::in_addr { s_addr: u32::from(from).to_be() },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            vec![ControlMessage::Ipv4PacketInfo(&v4_info)]
        }
        Some((IpAddr::V6(from), interface)) => {
            v6_info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr { s6_addr: from.octets() },
                ipi6_ifindex: interface,
            };
            vec![ControlMessage::Ipv6PacketInfo(&v6_info)]
        }
        None => Vec::new(),
    };
    match to {
        SocketAddr::V4(to) => {
            socket::sendmsg(fd, &iov, &cmsgs, MsgFlags::empty(), Some(&SockaddrIn::from(to)))?
        }
        SocketAddr::V6(to) => {
            socket::sendmsg(fd, &iov, &cmsgs, MsgFlags::empty(), Some(&SockaddrIn6::from(to)))?
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn a_local_datagram_says_who_sent_it_and_from_where() {
        let dir = tempfile::tempdir().unwrap();
        let server = UnixDatagram::bind(dir.path().join("server.sock")).unwrap();
        pass_credentials(&server).unwrap();
        let named = UnixDatagram::bind(dir.path().join("client.sock")).unwrap();
        named.send_to(b"hello", dir.path().join("server.sock")).unwrap();
        let mut buffer = [0u8; 64];
        let datagram = recv_local(&server, &mut buffer).unwrap();
        assert_eq!(&buffer[..datagram.len], b"hello");
        assert_eq!(datagram.sender.as_deref(), Some(dir.path().join("client.sock").as_path()));
        assert_eq!(datagram.sender_uid, Some(nix::unistd::getuid().as_raw()));
        send_local_now(&server, b"back", &dir.path().join("client.sock")).unwrap();
        assert_eq!(named.recv(&mut buffer).unwrap(), 4);
        // A sender without a name: no path to answer, and no panic.
        let unnamed = UnixDatagram::unbound().unwrap();
        unnamed.send_to(b"anyone?", dir.path().join("server.sock")).unwrap();
        let datagram = recv_local(&server, &mut buffer).unwrap();
        assert_eq!((datagram.len, datagram.sender), (7, None));
    }

    #[test]
    fn a_batch_holds_each_datagram_with_its_source_destination_and_timestamp() {
        let server = NtpSocket::bind_std("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent: [&[u8]; 3] = [&[1; 48], &[2; 68], &[3; batch::DATAGRAM_CAPACITY]];
        for datagram in sent {
            client.send_to(datagram, server.local_addr().unwrap()).unwrap();
        }
        // Longer than a batch's buffer: taken, without its bytes.
        client.send_to(&[4; batch::DATAGRAM_CAPACITY + 1], server.local_addr().unwrap()).unwrap();
        let mut batch = Batch::default();
        assert_eq!(batch.receive(server.as_raw_fd()).unwrap(), 4);
        let received: Vec<_> = batch.datagrams().collect();
        assert_eq!(received.len(), 4);
        assert_eq!(received[3].1, None, "the truncated datagram");
        for ((datagram, bytes), sent) in received.into_iter().zip(sent) {
            assert_eq!(bytes, Some(sent));
            assert_eq!(datagram.source, client.local_addr().unwrap());
            assert_eq!(
                datagram.destination.map(|(address, _)| address),
                Some([127, 0, 0, 1].into())
            );
            assert!(datagram.received_realtime_ns.is_some());
        }
        // Nothing waiting: the socket would block, and the batch is empty.
        let error = batch.receive(server.as_raw_fd()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(batch.datagrams().count(), 0);
        // One at a time, through the same control-message parser.
        client.send_to(&[5; 48], server.local_addr().unwrap()).unwrap();
        let mut buffer = [0u8; 64];
        let datagram = batch::receive_one(server.as_raw_fd(), &mut buffer).unwrap();
        assert_eq!((datagram.len, datagram.source), (48, client.local_addr().unwrap()));
        assert_eq!(datagram.destination.map(|(address, _)| address), Some([127, 0, 0, 1].into()));
        assert!(datagram.received_realtime_ns.is_some());
    }
}
