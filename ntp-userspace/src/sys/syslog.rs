//! Log lines to syslog (daemon facility), as chronyd logs when detached.

use std::{ffi::CString, io, sync::Once};

pub struct Writer(Vec<u8>);

impl Writer {
    pub fn open() -> Self {
        static OPEN: Once = Once::new();
        // SAFETY: the identifier is a static C string, valid for the process's lifetime.
        OPEN.call_once(|| unsafe {
            libc::openlog(c"ntpxd".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON)
        });
        Self(Vec::new())
    }
}

impl io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.0).trim_end().replace('\0', " ");
        if let Ok(line) = CString::new(line) {
            // SAFETY: both strings are NUL-terminated; "%s" takes exactly one argument.
            unsafe { libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), line.as_ptr()) };
        }
    }
}
