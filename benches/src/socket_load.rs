//! The socket load generator: requests with sendmmsg and replies with recvmmsg, for servers on
//! other machines and as a cross-check of the XDP generator. It tops out well below the XDP
//! generator (a few hundred thousand requests a second here).

use std::{
    io::{IoSlice, IoSliceMut},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use ntp_common::wire::{HEADER_LEN, NtpHeader, NtpTimestamp};
use ntp_userspace::sys::clock;

use crate::{
    frames::{Reply, check_reply},
    programs::Tally,
    step::Step,
};

pub const BATCH: usize = 32;

/// Offers `rate` requests a second to `server` for `duration`, and counts the replies.
pub fn step(server: SocketAddr, rate: f64, duration: Duration) -> anyhow::Result<Step> {
    let bind: SocketAddr =
        if server.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let socket = Arc::new(UdpSocket::bind(bind)?);
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let utc_minus_tai_ns = -i64::from(clock::tai_offset_s()) * 1_000_000_000;
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (socket, done) = (socket.clone(), done.clone());
        std::thread::spawn(move || receive(&socket, &done, utc_minus_tai_ns))
    };
    let target = SockaddrStorage::from(server);
    let (offered, seconds) = paced(rate, duration, |count| {
        let requests: Vec<[u8; HEADER_LEN]> = (0..count)
            .map(|_| {
                NtpHeader::client_request(4, 6, NtpTimestamp::from_fixed(clock::tai_ns()))
                    .to_bytes()
            })
            .collect();
        let slices: Vec<[IoSlice<'_>; 1]> = requests.iter().map(|r| [IoSlice::new(r)]).collect();
        send_batch(&socket, target, &slices)
    });
    std::thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::Relaxed);
    let tally = receiver.join().map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
    Ok(Step { target_rate: rate, offered, seconds, tally })
}

/// Paces batches of up to [`BATCH`] requests at `rate` a second for `duration`: `send(count)`
/// sends `count` and says how many left. Returns how many left, and the seconds it took.
pub fn paced(rate: f64, duration: Duration, mut send: impl FnMut(usize) -> usize) -> (u64, f64) {
    let start = Instant::now();
    let slice = Duration::from_millis(1);
    let (mut offered, mut due, mut next) = (0u64, 0.0, start);
    while next < start + duration {
        due += rate * slice.as_secs_f64();
        while due >= 1.0 {
            let count = (due.floor() as usize).min(BATCH);
            offered += send(count) as u64;
            due -= count as f64;
        }
        next += slice;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    (offered, start.elapsed().as_secs_f64())
}

/// Sends `requests` to `target` in one sendmmsg; how many left.
pub fn send_batch(
    socket: &UdpSocket,
    target: SockaddrStorage,
    requests: &[[IoSlice<'_>; 1]],
) -> usize {
    let addresses = vec![Some(target); requests.len()];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(requests.len(), None);
    sendmmsg(socket.as_raw_fd(), &mut headers, requests, &addresses, [], MsgFlags::empty())
        .map(|results| results.count())
        .unwrap_or(0)
}

fn receive(socket: &UdpSocket, done: &AtomicBool, utc_minus_tai_ns: i64) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        valid: 0,
        invalid: 0,
        kiss_of_death: 0,
        negative_offsets: 0,
        latency: Histogram::new(3)?,
        offset: Histogram::new(3)?,
    };
    receive_batches::<512>(socket, done, |datagrams| {
        let received = clock::tai_ns();
        for datagram in datagrams {
            match check_reply(datagram, received, utc_minus_tai_ns) {
                Ok(Reply::Time { latency_ns, offset_ns }) => {
                    tally.valid += 1;
                    tally.latency.record(latency_ns.max(1))?;
                    tally.negative_offsets += u64::from(offset_ns < 0);
                    tally.offset.record(offset_ns.unsigned_abs().max(1))?;
                }
                Ok(Reply::KissOfDeath) => tally.kiss_of_death += 1,
                Err(_) => tally.invalid += 1,
            }
        }
        Ok(())
    })?;
    Ok(tally)
}

/// Receives on `socket` until `done`, up to [`BATCH`] datagrams (of at most `N` bytes) a system
/// call, and calls `f` with each batch. The socket's read timeout is how often `done` is checked.
pub fn receive_batches<const N: usize>(
    socket: &UdpSocket,
    done: &AtomicBool,
    mut f: impl FnMut(&[&[u8]]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut buffers = [[0u8; N]; BATCH];
    while !done.load(Ordering::Relaxed) {
        let mut slices: Vec<[IoSliceMut<'_>; 1]> =
            buffers.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let lengths: Vec<usize> = match recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            // Return as soon as one reply is there, not when the batch is full.
            MsgFlags::MSG_WAITFORONE,
            None,
        ) {
            Ok(messages) => messages.map(|m| m.bytes).collect(),
            Err(_) => continue, // the read timeout: check whether to stop
        };
        let datagrams: Vec<&[u8]> =
            buffers.iter().zip(lengths).map(|(buffer, len)| &buffer[..len]).collect();
        f(&datagrams)?;
    }
    Ok(())
}
