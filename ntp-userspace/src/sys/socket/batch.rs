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

use super::super::clock::timespec_ns;

/// Datagrams a slow-path thread takes in one system call: enough that a loaded socket is drained
/// with few calls, few enough that the first waits little for the last to be answered.
pub const BATCH: usize = 32;

/// The longest datagram kept whole, the longest NTP datagram; longer ones are truncated (and
/// not answered).
pub const DATAGRAM_CAPACITY: usize = ntp_common::extension::MAX_PACKET_LEN;

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
    /// longer than the longest NTP datagram (truncated).
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
            header.msg_hdr = message_into(&mut self.names[i], iovec, &mut self.controls[i]);
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
            let length = header.msg_len as usize;
            // SAFETY: recvmmsg filled this message.
            let Some(datagram) = (unsafe { datagram_of(message, length, DATAGRAM_CAPACITY) })
            else {
                continue;
            };
            let truncated = message.msg_flags & libc::MSG_TRUNC != 0;
            self.received.push(Received { datagram, index, truncated });
        }
        Ok(count)
    }
}

/// A received datagram.
pub struct Datagram {
    pub len: usize,
    pub source: SocketAddr,
    /// The address the client sent to and the interface it came in on, if the kernel said.
    pub destination: Option<(IpAddr, u32)>,
    /// CLOCK_REALTIME when the kernel received it, in ns.
    pub received_realtime_ns: Option<u64>,
}

/// Takes the one datagram waiting on `fd` into `buffer` (a longer one is cut to its length),
/// without waiting.
pub fn receive_one(fd: i32, buffer: &mut [u8]) -> io::Result<Datagram> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) value.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = Control([0; 192]);
    let mut iovec = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
    let mut message = message_into(&mut name, &mut iovec, &mut control);
    // SAFETY: the message points at its own name, iovec, buffer and control buffer, valid for
    // the lengths given and alive for the call.
    let length = unsafe { libc::recvmsg(fd, &raw mut message, libc::MSG_DONTWAIT) };
    let length = usize::try_from(length).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: recvmsg filled the message.
    unsafe { datagram_of(&message, length, buffer.len()) }
        .ok_or_else(|| io::Error::other("datagram without a source address"))
}

/// A message header that receives into `iovec`, the sender's address into `name` and the
/// control messages into `control`.
fn message_into(
    name: &mut libc::sockaddr_storage,
    iovec: &mut libc::iovec,
    control: &mut Control,
) -> libc::msghdr {
    // SAFETY: msghdr is plain data; every pointer is set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_name = std::ptr::from_mut(name).cast();
    message.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
    message.msg_iov = iovec;
    message.msg_iovlen = 1;
    message.msg_control = control.0.as_mut_ptr().cast();
    message.msg_controllen = control.0.len();
    message
}

/// The datagram a message from [`message_into`] received, `length` bytes long (at most
/// `capacity` of them kept): its sender, destination and receive timestamp. None without a
/// sender of a family ntpxd serves.
///
/// # Safety
/// The kernel filled `message` (recvmsg or recvmmsg): its name and `msg_controllen` bytes of
/// its control buffer.
unsafe fn datagram_of(message: &libc::msghdr, length: usize, capacity: usize) -> Option<Datagram> {
    // SAFETY: the name is the sockaddr_storage message_into pointed at.
    let name = unsafe { &*message.msg_name.cast::<libc::sockaddr_storage>() };
    let source = socket_address(name)?;
    let mut datagram = Datagram {
        len: length.min(capacity),
        source,
        destination: None,
        received_realtime_ns: None,
    };
    // SAFETY: the caller vouches for the control buffer; the macros stay within it.
    unsafe { read_control_messages(message, &mut datagram) };
    Some(datagram)
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
                    datagram.received_realtime_ns = Some(timespec_ns(ts.tv_sec, ts.tv_nsec));
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
