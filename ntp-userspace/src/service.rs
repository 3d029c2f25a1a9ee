//! Telling the service manager how ntpxd is doing (systemd's `Type=notify` protocol). Outside
//! systemd (no `NOTIFY_SOCKET`) every notification is a no-op.

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
