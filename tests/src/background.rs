//! A thread a test helper runs until it is dropped (a server, a writer, a poller).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

/// Runs `work` on a thread, which must return soon after its flag says stop; dropping this
/// says stop and waits for it.
pub struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn spawn(work: impl FnOnce(&AtomicBool) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || work(&stopping));
        Self { stop, thread: Some(thread) }
    }
}

/// Whether the work should go on.
pub fn running(stop: &AtomicBool) -> bool {
    !stop.load(Ordering::Relaxed)
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
