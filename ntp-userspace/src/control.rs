//! The control protocol between ntpxc and ntpxd: one JSON request line over the Unix socket,
//! one JSON response line back.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use ntp_common::maps::Counter;
use serde::{Deserialize, Serialize};

use crate::dataplane::AttachMode;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    ServerStats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    ServerStats(ServerStats),
    Error { message: String },
}

/// `serverstats`: chrony's counters, then this server's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Requests from admitted clients: answered in the kernel or received by the slow path.
    pub ntp_packets_received: u64,
    /// Requests dropped by rate limiting.
    pub ntp_packets_dropped: u64,
    pub command_packets_received: u64,
    pub command_packets_dropped: u64,
    pub client_log_records_dropped: u64,
    pub nts_ke_connections_accepted: u64,
    pub nts_ke_connections_dropped: u64,
    pub authenticated_ntp_packets: u64,
    pub interleaved_ntp_packets: u64,
    pub ntp_timestamps_held: u64,
    pub ntp_timestamp_span: u64,
    /// The XDP program's counters, summed over CPUs.
    pub kernel: KernelCounters,
    pub slow_path: SlowPathCounters,
    /// Interfaces the XDP program is attached to.
    pub xdp: Vec<XdpAttachment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpAttachment {
    pub interface: String,
    pub mode: AttachMode,
}

/// The XDP program's counters (see [`Counter`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    pub received: u64,
    pub answered: u64,
    pub passed_malformed: u64,
    pub passed_fragment: u64,
    pub passed_length: u64,
    pub passed_not_request: u64,
    pub passed_address: u64,
    pub passed_checksum: u64,
    pub passed_stale: u64,
    pub dropped_denied: u64,
}

impl KernelCounters {
    pub fn from_array(values: &[u64; Counter::COUNT as usize]) -> Self {
        let mut counters = Self::default();
        for counter in Counter::ALL {
            *counters.field(counter) = values[counter as usize];
        }
        counters
    }

    fn field(&mut self, counter: Counter) -> &mut u64 {
        match counter {
            Counter::Received => &mut self.received,
            Counter::Answered => &mut self.answered,
            Counter::PassedMalformed => &mut self.passed_malformed,
            Counter::PassedFragment => &mut self.passed_fragment,
            Counter::PassedLength => &mut self.passed_length,
            Counter::PassedNotRequest => &mut self.passed_not_request,
            Counter::PassedAddress => &mut self.passed_address,
            Counter::PassedChecksum => &mut self.passed_checksum,
            Counter::PassedStale => &mut self.passed_stale,
            Counter::DroppedDenied => &mut self.dropped_denied,
        }
    }
}

/// The daemon's socket path: what the kernel passed, or everything without XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowPathCounters {
    /// Datagrams from admitted clients.
    pub received: u64,
    pub answered: u64,
    /// Datagrams from clients the access rules deny.
    pub denied: u64,
}

/// Sends one request to the daemon at `socket` and waits for its response.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to ntpxd at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut response = String::new();
    BufReader::new(&stream).read_line(&mut response).context("reading ntpxd's response")?;
    serde_json::from_str(&response)
        .with_context(|| format!("bad response from ntpxd: {response:?}"))
}
