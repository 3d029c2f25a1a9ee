//! The slow path's batches: up to [`BATCH`] datagrams taken from a socket in one system call
//! (recvmmsg), each with its kernel receive timestamp and destination address. Replies still
//! leave one system call each, right after their transmit timestamp is read: a reply held back
//! for the rest of a batch would carry a transmit time earlier than its departure.
//!
//! Written against libc rather than nix's recvmmsg, whose reused headers keep the lengths the
//! kernel wrote back from one call to the next.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use super::Datagram;

/// Datagrams a slow-path thread takes in one system call: enough that a loaded socket is drained
/// with few calls, few enough that the first waits little for the last to be answered.
pub const BATCH: usize = 32;

/// The longest datagram kept whole, the longest NTP datagram; longer ones are truncated (and
/// not answered).
const DATAGRAM_CAPACITY: usize = ntp_common::extension::MAX_PACKET_LEN;

/// A message's control buffer, aligned as cmsghdr wants: room for a receive timestamp,
/// IPv6 packet info and a timestamping socket's three timestamps.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 192]);

/// Buffers for a batch of datagrams and the outcome of the last receive.
pub struct Batch {
    buffers: Box<[[u8; DATAGRAM_CAPACITY]; BATCH]>,
    controls: Box<[Control; BATCH]>,
    names: Box<[libc::sockaddr_storage; BATCH]>,
    received: Vec<Received>,
}

/// A received datagram and where its bytes are.
struct Received {
    datagram: Datagram,
    index: usize,
    truncated: bool,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            buffers: Box::new([[0; DATAGRAM_CAPACITY]; BATCH]),
            controls: Box::new([Control([0; 192]); BATCH]),
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) value.
            names: Box::new([unsafe { std::mem::zeroed() }; BATCH]),
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl Batch {
    /// The datagrams the last receive took, with their bytes, or None for one that was
    /// longer than [`DATAGRAM_CAPACITY`] (truncated).
    pub fn datagrams(&self) -> impl Iterator<Item = (&Datagram, Option<&[u8]>)> {
        self.received.iter().map(|r| {
            let bytes = &self.buffers[r.index][..r.datagram.len];
            (&r.datagram, (!r.truncated).then_some(bytes))
        })
    }

    /// Takes the datagrams waiting on `fd`, up to [`BATCH`], without waiting for any.
    pub(super) fn receive(&mut self, fd: i32) -> io::Result<usize> {
        self.received.clear();
        // SAFETY: a zeroed iovec is valid (null, empty); every pointer is set below.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as for the iovecs.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, (iovec, header)) in iovecs.iter_mut().zip(headers.iter_mut()).enumerate() {
            *iovec = libc::iovec {
                iov_base: self.buffers[i].as_mut_ptr().cast(),
                iov_len: DATAGRAM_CAPACITY,
            };
            let message = &mut header.msg_hdr;
            message.msg_name = std::ptr::from_mut(&mut self.names[i]).cast();
            message.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            message.msg_iov = iovec;
            message.msg_iovlen = 1;
            message.msg_control = self.controls[i].0.as_mut_ptr().cast();
            message.msg_controllen = self.controls[i].0.len();
        }
        // SAFETY: each header points at its own name, iovec, buffer and control buffer, valid
        // for the lengths given and alive for the call.
        let count = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let count = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
        for (index, header) in headers[..count].iter().enumerate() {
            let message = &header.msg_hdr;
            let Some(source) = socket_address(&self.names[index]) else { continue };
            let mut datagram = Datagram {
                len: (header.msg_len as usize).min(DATAGRAM_CAPACITY),
                source,
                destination: None,
                received_realtime_ns: None,
            };
            // SAFETY: the kernel filled `msg_controllen` bytes of the control buffer with
            // control messages; the macros stay within them.
            unsafe { read_control_messages(message, &mut datagram) };
            let truncated = message.msg_flags & libc::MSG_TRUNC != 0;
            self.received.push(Received { datagram, index, truncated });
        }
        Ok(count)
    }
}

fn socket_address(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for an AF_INET name.
            let a = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for an AF_INET6 name.
            let a = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// Reads a received message's timestamp and packet info into `datagram`.
///
/// # Safety
/// `message`'s control buffer holds `msg_controllen` bytes of control messages.
unsafe fn read_control_messages(message: &libc::msghdr, datagram: &mut Datagram) {
    // SAFETY: the caller vouches for the control buffer; each cmsg's data is read unaligned
    // and only when its length covers the type read.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(message);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            let data_len = header.cmsg_len as usize - (data as usize - cmsg as usize);
            match (header.cmsg_level, header.cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)
                    if data_len >= size_of::<libc::timespec>() =>
                {
                    let ts = data.cast::<libc::timespec>().read_unaligned();
                    datagram.received_realtime_ns =
                        Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO)
                    if data_len >= size_of::<libc::in_pktinfo>() =>
                {
                    let info = data.cast::<libc::in_pktinfo>().read_unaligned();
                    let address = IpAddr::from(u32::from_be(info.ipi_addr.s_addr).to_be_bytes());
                    datagram.destination = Some((address, info.ipi_ifindex as u32));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                    if data_len >= size_of::<libc::in6_pktinfo>() =>
                {
                    let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    datagram.destination =
                        Some((IpAddr::from(info.ipi6_addr.s6_addr), info.ipi6_ifindex));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(message, cmsg);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;
    use crate::socket::NtpSocket;

    #[test]
    fn a_batch_holds_each_datagram_with_its_source_destination_and_timestamp() {
        let server = NtpSocket::bind_std("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent: [&[u8]; 3] = [&[1; 48], &[2; 68], &[3; DATAGRAM_CAPACITY]];
        for datagram in sent {
            client.send_to(datagram, server.local_addr().unwrap()).unwrap();
        }
        // Longer than a batch's buffer: taken, without its bytes.
        client.send_to(&[4; DATAGRAM_CAPACITY + 1], server.local_addr().unwrap()).unwrap();
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
    }
}
