//! The control protocol between ntpxc and ntpxd (the messages are the core's), and ntpxc's side
//! of the socket.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
pub use ntpx_core::control::*;

/// Sends one request to the daemon at `socket` and waits for its response.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to ntpxd at {}", socket.display()))?;
    // A report on a client log of millions takes seconds; a daemon that hangs still fails it.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut response = String::new();
    BufReader::new(&stream).read_line(&mut response).context("reading ntpxd's response")?;
    serde_json::from_str(&response)
        .with_context(|| format!("bad response from ntpxd: {response:?}"))
}
