//! What every accept loop does when accepting fails.

use crate::{
    server::Server,
    sys::socket::{self},
};

/// Rests an accept loop on `door` after `error`: a shortage of descriptors or memory is counted,
/// logged and waited out (see [`socket::accept_backoff`]); other errors concern one connection,
/// and the loop goes on at once.
pub(super) async fn rest_after_accept(error: &std::io::Error, server: &Server, door: &str) {
    match socket::accept_backoff(error) {
        Some(rest) => {
            server.count_accept_backoff();
            tracing::warn!(%error, door, "cannot accept connections for now; resting {rest:?}");
            tokio::time::sleep(rest).await;
        }
        None => tracing::debug!(%error, door, "accepting a connection"),
    }
}
