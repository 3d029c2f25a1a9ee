//! The slow path's sockets: what the XDP program passes on, or everything where it is not
//! attached, answered by the server's decisions.

use std::sync::Arc;

use crate::{
    reference::TaiReading,
    server::Server,
    sys::{
        clock::{self},
        socket::{Batch, Datagram, NtpSocket},
    },
};

/// The slow path: answers what reaches the socket (everything the XDP program passes, or all
/// requests where it is not attached), taking the datagrams waiting a batch at a time.
pub(super) async fn serve_socket(socket: Arc<NtpSocket>, server: Arc<Server>) {
    let mut batch = Batch::default();
    loop {
        if let Err(error) = socket.recv_batch(&mut batch).await {
            tracing::warn!(%error, "receiving on the NTP socket");
            continue;
        }
        for (datagram, request) in batch.datagrams() {
            answer(&socket, &server, datagram, request).await;
        }
    }
}

/// Answers one datagram of the slow path, if it gets an answer (`request` is None for one too
/// long to be read whole).
pub(super) async fn answer(
    socket: &NtpSocket,
    server: &Server,
    datagram: &Datagram,
    request: Option<&[u8]>,
) {
    // IP_PKTINFO is on: the kernel always says where a datagram went.
    let (Some(request), Some(destination)) = (request, datagram.destination) else {
        tracing::debug!(client = %datagram.source, len = datagram.len, "unreadable: not answered");
        server.count_unreadable();
        return;
    };
    let received_ns = datagram.received_realtime_ns.unwrap_or_else(clock::realtime_ns);
    // TAI - UTC as the kernel has it now: it changes at a leap second, at once.
    let received = TaiReading::from_system_time(received_ns, clock::tai_offset_s());
    match server.handle_datagram(request, datagram.source, destination, received, clock::tai_ns) {
        Ok(reply) => {
            let reply = reply.bytes();
            if let Err(error) = socket.send(reply, datagram.source, Some(destination)).await {
                tracing::debug!(%error, client = %datagram.source, "sending a reply");
            }
        }
        Err(reason) => tracing::debug!(client = %datagram.source, ?reason, "not answered"),
    }
}
