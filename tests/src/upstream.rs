//! A test upstream server that serves the machine's time plus a fixed offset: the pure
//! responder of `ntp-common` behind a UDP socket with kernel receive timestamps.

use std::{net::SocketAddr, os::fd::AsRawFd as _, time::Duration};

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, SockaddrStorage, sockopt};
use ntp_common::{
    responder,
    state::{ReplyHeader, ServerState, TimeAnchor},
    wire::{Leap, NtpShort, NtpTimestamp, ReferenceId},
};
use ntp_userspace::sys::clock;

use crate::{
    background::{Background, running},
    netns::Netns,
};

/// Serves until dropped.
pub struct OffsetServer {
    _worker: Background,
}

/// A leap second the test upstream announces and makes, as a stratum 1 server does.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamLeap {
    /// The UTC midnight (Unix s) that ends the leap day.
    pub midnight: i64,
    pub inserted: bool,
}

impl UpstreamLeap {
    /// Where the served time (Unix ns, before the leap) makes the leap: an inserted second at
    /// midnight, a deleted one at 23:59:59.
    fn at_ns(&self) -> i64 {
        (self.midnight - if self.inserted { 0 } else { 1 }) * 1_000_000_000
    }

    /// The time served at `continuous_ns` (a timescale that makes no leap), and the leap
    /// indicator with it.
    fn serve(&self, continuous_ns: i64) -> (i64, Leap) {
        match (continuous_ns >= self.at_ns(), self.inserted) {
            (false, true) => (continuous_ns, Leap::InsertSecond),
            (false, false) => (continuous_ns, Leap::DeleteSecond),
            (true, true) => (continuous_ns - 1_000_000_000, Leap::NoWarning),
            (true, false) => (continuous_ns + 1_000_000_000, Leap::NoWarning),
        }
    }
}

impl OffsetServer {
    /// Serves on `address` in `netns`, `offset_ns` ahead of this machine's clock, at stratum 1.
    pub fn start(netns: &Netns, address: SocketAddr, offset_ns: i64) -> Self {
        Self::serve(netns, address, offset_ns, None, false)
    }

    /// As `start`, announcing and then making `leap`.
    pub fn start_with_leap(
        netns: &Netns,
        address: SocketAddr,
        offset_ns: i64,
        leap: UpstreamLeap,
    ) -> Self {
        Self::serve(netns, address, offset_ns, Some(leap), false)
    }

    /// As `start`, but each reply follows a forgery from the same address and port: the reply
    /// with a wrong origin timestamp, as an off-path attacker who guessed the client's port
    /// would send it.
    pub fn start_with_forgeries(netns: &Netns, address: SocketAddr, offset_ns: i64) -> Self {
        Self::serve(netns, address, offset_ns, None, true)
    }

    fn serve(
        netns: &Netns,
        address: SocketAddr,
        offset_ns: i64,
        leap: Option<UpstreamLeap>,
        forge: bool,
    ) -> Self {
        // A socket stays in the namespace it was opened in.
        let socket =
            netns.enter(|| std::net::UdpSocket::bind(address)).expect("binding the upstream");
        socket::setsockopt(&socket, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let worker = Background::spawn(move |stop| {
            let mut buffer = [0u8; 1024];
            while running(stop) {
                let mut control = nix::cmsg_space!(nix::sys::time::TimeSpec);
                let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
                let Ok(message) = socket::recvmsg::<SockaddrStorage>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut control),
                    MsgFlags::empty(),
                ) else {
                    continue;
                };
                let (len, from) = (message.bytes, message.address);
                let received_realtime = message.cmsgs().ok().and_then(|mut cmsgs| {
                    cmsgs.find_map(|cmsg| match cmsg {
                        ControlMessageOwned::ScmTimestampns(ts) => {
                            Some(clock::timespec_ns(ts.tv_sec(), ts.tv_nsec()))
                        }
                        _ => None,
                    })
                });
                let (Some(from), Some(received_realtime)) = (from, received_realtime) else {
                    continue;
                };
                // TAI and the system clock, read together, to place the receive instant in TAI.
                let tai_minus_realtime = clock::tai_ns() as i64 - clock::realtime_ns() as i64;
                let received_tai = received_realtime.saturating_add_signed(tai_minus_realtime);
                let continuous = received_realtime as i64 + offset_ns;
                let (served, leap) =
                    leap.map_or((continuous, Leap::NoWarning), |l| l.serve(continuous));
                let anchor = TimeAnchor {
                    tai_ns: received_tai,
                    served_unix_ns: served as u64,
                    frequency: 0.0,
                };
                let header = ReplyHeader {
                    leap,
                    stratum: 1,
                    precision: -24,
                    root_delay: NtpShort::ZERO,
                    root_dispersion: NtpShort::from_seconds(10e-6),
                    dispersion_rate: 0.0,
                    reference_id: ReferenceId::from_bits(*b"TEST"),
                    reference_time: NtpTimestamp::from_unix_nanos(received_realtime),
                };
                let state = ServerState::new(anchor, header, 1_000_000_000);
                if let Ok(reply) =
                    responder::respond(&buffer[..len], &state, received_tai, clock::tai_ns(), 0)
                {
                    if forge {
                        let mut forgery = reply;
                        forgery[24..32].copy_from_slice(&[0x5a; 8]);
                        let _ =
                            socket::sendto(socket.as_raw_fd(), &forgery, &from, MsgFlags::empty());
                    }
                    let _ = socket::sendto(socket.as_raw_fd(), &reply, &from, MsgFlags::empty());
                }
            }
        });
        Self { _worker: worker }
    }
}
