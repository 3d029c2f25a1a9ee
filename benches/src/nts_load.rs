//! The NTS row: authenticated requests a second answered by ntpxd and by chronyd 4.3's NTS
//! server, each on one CPU, under the same load: a socket generator (sendmmsg from 16 source
//! ports) on the other CPU. The generator gets keys and a cookie once through NTS-KE and sends
//! requests made from them (a server keeps no state per cookie: one serves every request). A
//! reply counts when it is an authenticated server reply, as long as its request.

use std::{
    io::IoSlice,
    net::{SocketAddr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use nix::sys::socket::SockaddrStorage;
use ntp_common::wire::{NtpHeader, NtpTimestamp};
use ntp_userspace::{nts::packet, upstream};
use ntpx_tests::{
    netns::{Link, SERVER_V4},
    peers::{Chronyd, Ntpxd, Process},
    pki,
};

use crate::{
    bed::{LOAD_CPU, SERVER_CPU, pin},
    programs::Tally,
    socket_load::{self, BATCH},
    step::Step,
};

/// Source ports the load comes from (the kernel spreads them over ntpxd's sockets).
const PORTS: usize = 16;
/// Distinct requests cycled through (different transmit timestamps, all authentic).
const REQUESTS: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NtsServer {
    Ntpxd,
    Chronyd,
}

impl NtsServer {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ntpxd => "ntpxd (NTS)",
            Self::Chronyd => "chronyd 4.3 (NTS)",
        }
    }
}

enum Running {
    Ntpxd(Ntpxd),
    Chronyd(Chronyd),
}

impl Running {
    fn process(&self) -> &Process {
        match self {
            Self::Ntpxd(ntpxd) => &ntpxd.process,
            Self::Chronyd(chronyd) => &chronyd.process,
        }
    }
}

pub struct NtsBed {
    _server: Running,
    requests: Vec<Vec<u8>>,
    server: SocketAddr,
}

impl NtsBed {
    /// Starts `kind` with NTS in a namespace, does NTS-KE with it once, and runs `work` from
    /// the client's namespace on the load's CPU.
    pub fn run<T: Send>(
        kind: NtsServer,
        work: impl FnOnce(&mut NtsBed) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let link = Link::without_client_program();
        let dir = tempfile::tempdir()?;
        pki::make_certificates(dir.path(), SERVER_V4);
        let config = format!(
            "local stratum 10\nallow\nntsservercert {}\nntsserverkey {}\n",
            dir.path().join("server.pem").display(),
            dir.path().join("server.key").display()
        );
        let server = match kind {
            NtsServer::Ntpxd => Running::Ntpxd(Ntpxd::start(&link.server_ns, &config)),
            NtsServer::Chronyd => Running::Chronyd(Chronyd::start(&link.server_ns, &config)),
        };
        let pid = server.process().pid().as_raw();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            if let Ok(tid) = task?.file_name().to_string_lossy().parse() {
                pin(tid, SERVER_CPU)?;
            }
        }
        let ca = dir.path().join("ca.pem");
        link.client_ns.enter(|| {
            pin(0, LOAD_CPU)?;
            let requests = authenticated_requests(&ca)?;
            let server_address = SocketAddr::new(SERVER_V4.parse()?, 123);
            let mut bed = NtsBed { _server: server, requests, server: server_address };
            work(&mut bed)
        })
    }

    /// Offers `rate` authenticated requests a second for `duration`, and counts the replies.
    pub fn step(&mut self, rate: f64, duration: Duration) -> anyhow::Result<Step> {
        let sockets: Vec<Arc<UdpSocket>> = (0..PORTS)
            .map(|_| {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(Arc::new(socket))
            })
            .collect::<std::io::Result<_>>()?;
        let done = Arc::new(AtomicBool::new(false));
        let receivers: Vec<_> = sockets
            .iter()
            .map(|socket| {
                let (socket, done) = (socket.clone(), done.clone());
                std::thread::spawn(move || receive(&socket, &done))
            })
            .collect();
        let target = SockaddrStorage::from(self.server);
        let mut at = 0usize;
        let (offered, seconds) = socket_load::paced(rate, duration, |count| {
            let batch: Vec<[IoSlice<'_>; 1]> =
                (0..count).map(|i| [IoSlice::new(&self.requests[(at + i) % REQUESTS])]).collect();
            let socket = &sockets[(at / BATCH) % PORTS];
            at += count;
            socket_load::send_batch(socket, target, &batch)
        });
        std::thread::sleep(Duration::from_millis(200));
        done.store(true, Ordering::Relaxed);
        let mut tally = empty_tally()?;
        for receiver in receivers {
            let (valid, invalid) =
                receiver.join().map_err(|_| anyhow::anyhow!("a receiver panicked"))??;
            tally.valid += valid;
            tally.invalid += invalid;
        }
        Ok(Step { target_rate: rate, offered, seconds, tally })
    }
}

/// NTS-KE with the server once; then requests made with its keys and first cookie.
fn authenticated_requests(ca: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let tls = Arc::new(upstream::nts_client_tls(&[ca.to_owned()], false)?);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (keys, granted) = runtime
        .block_on(upstream::nts_key_exchange(
            SocketAddr::new(SERVER_V4.parse()?, 123),
            SERVER_V4,
            tls,
        ))
        .context("NTS-KE with the server")?;
    let cookie = granted.cookies.first().context("no cookie")?;
    Ok((0..REQUESTS)
        .map(|i| {
            let transmit = NtpTimestamp::from_fixed(0x1234_5678_0000_0000 + i as u64);
            let header = NtpHeader::client_request(4, 6, transmit).to_bytes();
            packet::protect(&header, cookie, 0, &keys).0
        })
        .collect())
}

fn empty_tally() -> anyhow::Result<Tally> {
    Ok(Tally {
        valid: 0,
        invalid: 0,
        kiss_of_death: 0,
        negative_offsets: 0,
        latency: Histogram::new(3)?,
        offset: Histogram::new(3)?,
    })
}

/// (authenticated server replies, anything else) received on `socket` until `done`.
fn receive(socket: &UdpSocket, done: &AtomicBool) -> anyhow::Result<(u64, u64)> {
    let (mut valid, mut invalid) = (0, 0);
    socket_load::receive_batches::<1024>(socket, done, |datagrams| {
        for datagram in datagrams {
            // A server's reply (mode 4), not a kiss, with extension fields: authenticated.
            let is_reply = datagram.len() > 48 && datagram[0] & 7 == 4 && datagram[1] != 0;
            if is_reply { valid += 1 } else { invalid += 1 }
        }
        Ok(())
    })?;
    Ok((valid, invalid))
}
