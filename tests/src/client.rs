//! Minimal NTP clients for the tests: a UDP client bound to a chosen source address, and a raw
//! Ethernet client (AF_PACKET) for frames the kernel cannot build here, such as 802.1Q-tagged ones.

use std::{
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use ntp_common::wire::{HEADER_LEN, NtpHeader, NtpTimestamp};

/// Sends a client request from `source` to `server` and waits up to `timeout` for the reply
/// whose origin timestamp matches.
pub fn query(source: SocketAddr, server: SocketAddr, timeout: Duration) -> Option<NtpHeader> {
    let (socket, transmit) = send_request(source, server);
    await_reply(&socket, server, transmit, timeout)
}

/// As `query`, but a request unanswered after `timeout` gets `on_timeout` called (to wake a
/// stopped server, say) and 5 s more; whether that happened is returned beside the reply.
pub fn query_waiting(
    source: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
    on_timeout: impl FnOnce(),
) -> (Option<NtpHeader>, bool) {
    let (socket, transmit) = send_request(source, server);
    if let Some(reply) = await_reply(&socket, server, transmit, timeout) {
        return (Some(reply), false);
    }
    on_timeout();
    (await_reply(&socket, server, transmit, Duration::from_secs(5)), true)
}

fn send_request(source: SocketAddr, server: SocketAddr) -> (UdpSocket, NtpTimestamp) {
    let socket = UdpSocket::bind(source).unwrap_or_else(|e| panic!("binding {source}: {e}"));
    let transmit = NtpTimestamp::from_fixed(0x0123_4567_89ab_cdef ^ u64::from(std::process::id()));
    let request = NtpHeader::client_request(4, 6, transmit).to_bytes();
    socket.send_to(&request, server).expect("sending a request");
    (socket, transmit)
}

/// The reply from `server` echoing `transmit`, if one comes within `timeout`.
fn await_reply(
    socket: &UdpSocket,
    server: SocketAddr,
    transmit: NtpTimestamp,
    timeout: Duration,
) -> Option<NtpHeader> {
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 512];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match socket.recv_from(&mut buffer) {
            Ok((HEADER_LEN, from)) if from == server => {
                let reply = NtpHeader::from_bytes(buffer[..HEADER_LEN].try_into().unwrap());
                if reply.origin_timestamp == transmit {
                    return Some(reply);
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return None;
            }
            Err(e) => panic!("receiving: {e}"),
        }
    }
}

/// One exchange with a server, timed by this machine's clock.
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    pub reply: NtpHeader,
    /// When the request left, Unix ns (this machine's clock).
    pub sent_ns: i64,
    /// The server's time minus this machine's clock, s (NTP's offset: the mean of the two
    /// one-way differences). Asymmetric paths make it off by up to half the delay.
    pub offset: f64,
    /// The round trip less the server's time with the request, s.
    pub delay: f64,
}

impl Exchange {
    /// The server's transmit time, Unix ns (its era resolved against the send time).
    pub fn served_ns(&self) -> i64 {
        self.reply.transmit_timestamp.to_unix_nanos_near(self.sent_ns)
    }
}

/// Sends a request stamped with this machine's clock from `source` to `server`, and measures
/// the server's offset from the reply.
pub fn exchange(source: SocketAddr, server: SocketAddr, timeout: Duration) -> Option<Exchange> {
    exchange_with(source, server, &[], timeout)
}

/// As [`exchange`], with `trailer` (extension fields) after the request's header: a request
/// the XDP program passes to the slow path.
pub fn exchange_with(
    source: SocketAddr,
    server: SocketAddr,
    trailer: &[u8],
    timeout: Duration,
) -> Option<Exchange> {
    let now = || ntp_userspace::sys::clock::realtime_ns() as i64;
    let socket = UdpSocket::bind(source).unwrap_or_else(|e| panic!("binding {source}: {e}"));
    socket.set_read_timeout(Some(timeout)).unwrap();
    let sent_ns = now();
    let transmit = NtpTimestamp::from_unix_nanos(sent_ns as u64);
    let mut request = NtpHeader::client_request(4, 6, transmit).to_bytes().to_vec();
    request.extend_from_slice(trailer);
    socket.send_to(&request, server).ok()?;
    let mut buffer = [0u8; 512];
    loop {
        let (length, from) = socket.recv_from(&mut buffer).ok()?;
        let received_ns = now();
        if length != HEADER_LEN || from != server {
            continue;
        }
        let reply = NtpHeader::from_bytes(buffer[..HEADER_LEN].try_into().unwrap());
        if reply.origin_timestamp != transmit {
            continue;
        }
        let t2 = reply.receive_timestamp.to_unix_nanos_near(sent_ns);
        let t3 = reply.transmit_timestamp.to_unix_nanos_near(sent_ns);
        let offset = ((t2 - sent_ns) + (t3 - received_ns)) as f64 / 2e9;
        let delay = ((received_ns - sent_ns) - (t3 - t2)) as f64 * 1e-9;
        return Some(Exchange { reply, sent_ns, offset, delay });
    }
}

/// A TCP connection to `server` from the local address `source` (one of several a namespace's
/// interface has), as a peer at that address would open it.
pub fn tcp_connect_from(source: std::net::IpAddr, server: SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if server.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(source, 0)))?;
    socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(server))?;
    Ok(TcpStream::from(fd))
}

/// A received frame and the 802.1Q tag the kernel took off it, if any.
pub struct RawFrame {
    pub bytes: Vec<u8>,
    pub vlan_tci: Option<u16>,
}

/// An AF_PACKET socket on one interface, seeing every frame with its VLAN tag (PACKET_AUXDATA:
/// the kernel moves a received tag out of the frame into metadata).
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn open(interface: &str) -> Self {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a new socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let index = nix::net::if_::if_nametoindex(interface).expect("an interface index");
        // SAFETY: sockaddr_ll is plain old data.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as i32;
        // SAFETY: `address` is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        let on: libc::c_int = 1;
        // SAFETY: the option value is a valid int.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&raw const on).cast(),
                4,
            )
        };
        assert_eq!(rc, 0, "PACKET_AUXDATA: {}", io::Error::last_os_error());
        Self { fd }
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(sent, frame.len() as isize, "send: {}", io::Error::last_os_error());
    }

    /// Waits up to `timeout` for a frame that `wanted` accepts.
    pub fn receive(
        &self,
        timeout: Duration,
        wanted: impl Fn(&RawFrame) -> bool,
    ) -> Option<RawFrame> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut poll = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&self.fd),
                nix::poll::PollFlags::POLLIN,
            )];
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if nix::poll::poll(&mut poll, millis).unwrap_or(0) == 0 {
                continue;
            }
            let frame = self.receive_one();
            if wanted(&frame) {
                return Some(frame);
            }
        }
        None
    }

    fn receive_one(&self) -> RawFrame {
        let mut buffer = vec![0u8; 2048];
        let mut control = [0u64; 16];
        let mut iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
        // SAFETY: msghdr is plain old data; the pointers set below outlive the call.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = size_of_val(&control);
        // SAFETY: `message` describes valid buffers.
        let len = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut message, 0) };
        assert!(len >= 0, "recvmsg: {}", io::Error::last_os_error());
        buffer.truncate(len as usize);
        let mut vlan_tci = None;
        // SAFETY: walking the control messages the kernel wrote into `control`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&raw const message);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET
                    && (*cmsg).cmsg_type == libc::PACKET_AUXDATA
                {
                    let aux =
                        libc::CMSG_DATA(cmsg).cast::<libc::tpacket_auxdata>().read_unaligned();
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                        vlan_tci = Some(aux.tp_vlan_tci);
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&raw const message, cmsg);
            }
        }
        RawFrame { bytes: buffer, vlan_tci }
    }
}

/// Requests sent in the background, as the many clients of a public server would, from every
/// CPU: a veth runs the server's XDP program on the sending CPU, so this keeps the packet path
/// warm in each CPU's caches, as it is in service. Stops when dropped.
pub struct BackgroundLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl BackgroundLoad {
    /// Sends about `rate` requests per second per CPU from `source` to `server`, from threads
    /// that have entered the network namespace at `netns_path`.
    pub fn start(
        netns_path: &str,
        source: std::net::IpAddr,
        server: SocketAddr,
        rate: u32,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (0..cpus)
            .map(|cpu| {
                let stopping = stop.clone();
                let netns_path = netns_path.to_owned();
                std::thread::spawn(move || {
                    let mut set = nix::sched::CpuSet::new();
                    set.set(cpu).expect("a CPU");
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                        .expect("pinning");
                    let file = std::fs::File::open(&netns_path).expect("the namespace");
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    let socket = UdpSocket::bind(SocketAddr::new(source, 0))
                        .expect("binding the load's socket");
                    socket.set_nonblocking(true).expect("non-blocking");
                    let request =
                        NtpHeader::client_request(4, 0, NtpTimestamp::from_fixed(1)).to_bytes();
                    let interval = Duration::from_secs(1) / rate;
                    let mut replies = 0;
                    let mut buffer = [0u8; 512];
                    while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = socket.send_to(&request, server);
                        while socket.recv_from(&mut buffer).is_ok() {
                            replies += 1;
                        }
                        std::thread::sleep(interval);
                    }
                    replies
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the load and returns how many replies it received.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().expect("the load thread")).sum()
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
