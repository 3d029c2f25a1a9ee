//! ntpxd as a service: detaching from the terminal as a classic daemon, and telling the service
//! manager how it is doing (systemd's `Type=notify` protocol; outside systemd, no
//! `NOTIFY_SOCKET`, every notification is a no-op).

/// Detaches from the terminal and the session, as chronyd does without `-n` or `-d`.
pub fn detach() -> nix::Result<()> {
    nix::unistd::daemon(false, false)
}

/// What ntpxd tells the service manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Serving: the program attached, its first state published, the sockets open.
    Ready,
    /// The kernel's state was just republished (the watchdog's keep-alive).
    Alive,
    /// Shutting down.
    Stopping,
}

pub fn notify(state: State) {
    let message = match state {
        State::Ready => sd_notify::NotifyState::Ready,
        State::Alive => sd_notify::NotifyState::Watchdog,
        State::Stopping => sd_notify::NotifyState::Stopping,
    };
    if let Err(error) = sd_notify::notify(false, &[message]) {
        tracing::warn!(%error, ?state, "cannot notify the service manager");
    }
}
