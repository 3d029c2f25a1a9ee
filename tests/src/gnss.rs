//! Reference clocks for the tests: a GNSS receiver's NMEA sentences of this machine's time,
//! served over TCP to the real gpsd (which writes them to the NTP shared-memory segment), and
//! writers of the two protocols ntpxd reads directly: ntpd's shared memory and chrony's SOCK
//! datagrams.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    time::Duration,
};

use ntp_userspace::sys::shm::ShmTime;

use crate::{
    background::{Background, running},
    netns::Netns,
    peers::{Process, scratch_dir},
};

fn now_ns() -> i64 {
    ntp_userspace::sys::clock::realtime_ns() as i64
}

/// An NMEA sentence with its checksum.
fn sentence(body: &str) -> String {
    let checksum = body.bytes().fold(0u8, |sum, byte| sum ^ byte);
    format!("${body}*{checksum:02X}\r\n")
}

/// RMC, GGA and ZDA of the UTC second `unix_s`: a 3D fix in Munich, at rest.
fn sentences(unix_s: i64) -> String {
    let (days, second_of_day) = (unix_s.div_euclid(86_400), unix_s.rem_euclid(86_400));
    let (year, month, day) = ntp_userspace::sync::leap::civil_date(days);
    let time = format!(
        "{:02}{:02}{:02}.00",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    );
    let date = format!("{day:02}{month:02}{:02}", year % 100);
    [
        format!("GPRMC,{time},A,4807.038,N,01131.000,E,0.0,0.0,{date},,,A"),
        format!("GPGGA,{time},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
        format!("GPZDA,{time},{day:02},{month:02},{year},00,00"),
    ]
    .iter()
    .map(|body| sentence(body))
    .collect()
}

/// A GNSS receiver on TCP in a namespace: just after each second (`lag` after it), the
/// second's sentences, to whoever is connected.
pub struct NmeaServer {
    pub address: SocketAddr,
    _worker: Background,
}

impl NmeaServer {
    pub fn start(netns: &Netns, lag: Duration) -> Self {
        let listener = netns.enter(|| TcpListener::bind("127.0.0.1:0").expect("an NMEA port"));
        let address = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let worker = Background::spawn(move |stop| {
            let mut receivers = Vec::new();
            while running(stop) {
                // Sleep until `lag` past the next second.
                let now = now_ns();
                let next = (now.div_euclid(1_000_000_000) + 1) * 1_000_000_000;
                let at = next + lag.as_nanos() as i64;
                std::thread::sleep(Duration::from_nanos((at - now).max(0) as u64));
                while let Ok((stream, _)) = listener.accept() {
                    receivers.push(stream);
                }
                let burst = sentences(next / 1_000_000_000);
                receivers.retain_mut(|stream| stream.write_all(burst.as_bytes()).is_ok());
            }
        });
        Self { address, _worker: worker }
    }
}

/// The key of NTP shared-memory unit `unit`.
pub fn shm_key(unit: u32) -> u32 {
    ntp_userspace::sys::shm::SHM_KEY_BASE + unit
}

/// Removes the shared-memory segment of `unit` if there is one (segments outlive their
/// writers: gpsd drops root and cannot remove its own).
pub fn remove_shm(unit: u32) {
    let key = format!("0x{:08x}", shm_key(unit));
    let _ = std::process::Command::new("ipcrm").args(["-M", &key]).output();
}

/// The real gpsd, reading a receiver over TCP and writing the NTP shared-memory segment 0
/// (its PPS unit 1 stays unused without a PPS line). Dropped, it is stopped and the segments it
/// made are removed (it cannot: it drops root).
pub struct Gpsd {
    pub process: Process,
    _dir: tempfile::TempDir,
}

impl Gpsd {
    pub fn start(netns: &Netns, receiver: SocketAddr) -> Self {
        let dir = scratch_dir();
        let control = dir.path().join("gpsd.sock");
        let device = format!("tcp://{receiver}");
        let process = Process::spawn(
            "gpsd",
            netns,
            Path::new("gpsd"),
            &["-N", "-n", "-b", "-D", "2", "-F", control.to_str().unwrap(), &device],
            dir.path().join("gpsd.log"),
        );
        Self { process, _dir: dir }
    }
}

/// The NTP units gpsd makes segments for, and its own export segment's key ("GPSD").
const GPSD_UNITS: std::ops::Range<u32> = 0..8;
const GPSD_EXPORT_KEY: &str = "0x47505344";

impl Drop for Gpsd {
    fn drop(&mut self) {
        self.process.stop();
        for unit in GPSD_UNITS {
            remove_shm(unit);
        }
        let _ = std::process::Command::new("ipcrm").args(["-M", GPSD_EXPORT_KEY]).output();
    }
}

/// A writer of an NTP shared-memory segment of its own: each second, this machine's time plus
/// `error`, as a badly set receiver would report it.
pub struct ShmWriter {
    _worker: Background,
}

impl ShmWriter {
    /// Creates (or takes) segment `unit` with `mode` and writes it every second.
    pub fn start(unit: u32, mode: u32, error: Duration) -> Self {
        let segment = create_segment(unit, mode);
        let segment = segment as usize;
        let worker = Background::spawn(move |stop| {
            let segment = segment as *mut ShmTime;
            let mut count = 0;
            while running(stop) {
                let received = now_ns();
                let reference = received + error.as_nanos() as i64;
                count += 1;
                let time = ShmTime {
                    mode: 1,
                    count,
                    clock_sec: reference.div_euclid(1_000_000_000),
                    clock_usec: (reference.rem_euclid(1_000_000_000) / 1000) as i32,
                    receive_sec: received.div_euclid(1_000_000_000),
                    receive_usec: (received.rem_euclid(1_000_000_000) / 1000) as i32,
                    precision: -20,
                    valid: 1,
                    clock_nsec: reference.rem_euclid(1_000_000_000) as u32,
                    receive_nsec: received.rem_euclid(1_000_000_000) as u32,
                    ..ShmTime::default()
                };
                // SAFETY: the segment is attached for the process's life and as large as the
                // structure; the reader checks `count` and `valid` against torn writes.
                unsafe { std::ptr::write_volatile(segment, time) };
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Self { _worker: worker }
    }
}

/// Creates shared-memory segment `unit` with `mode` (removing an old one first) and attaches
/// it; the address.
fn create_segment(unit: u32, mode: u32) -> *mut ShmTime {
    remove_shm(unit);
    let key = shm_key(unit) as libc::key_t;
    // SAFETY: plain system calls; the size is the structure's.
    let id = unsafe {
        libc::shmget(key, size_of::<ShmTime>(), libc::IPC_CREAT | libc::IPC_EXCL | mode as i32)
    };
    assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
    // SAFETY: attaches the segment just made.
    let address = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    assert!(address as isize != -1, "shmat: {}", std::io::Error::last_os_error());
    address.cast()
}

/// Gives segment `unit` to user `uid` (as if that user had made it).
pub fn give_segment(unit: u32, uid: u32) {
    let key = shm_key(unit) as libc::key_t;
    // SAFETY: plain system calls on a segment that exists; `stat` is the kernel's to fill.
    unsafe {
        let id = libc::shmget(key, 0, 0);
        assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
        let mut stat: libc::shmid_ds = std::mem::zeroed();
        assert_eq!(libc::shmctl(id, libc::IPC_STAT, &raw mut stat), 0);
        stat.shm_perm.uid = uid;
        assert_eq!(libc::shmctl(id, libc::IPC_SET, &raw mut stat), 0);
    }
}

/// A writer of chrony's SOCK datagrams (`struct sock_sample`): each second, this machine's
/// time plus `error`, to the socket ntpxd made at `path`.
pub struct SockWriter {
    _worker: Background,
}

impl SockWriter {
    pub fn start(path: PathBuf, error: f64) -> Self {
        let worker = Background::spawn(move |stop| {
            let socket = UnixDatagram::unbound().expect("a datagram socket");
            while running(stop) {
                let now = now_ns();
                let mut sample = Vec::with_capacity(40);
                sample.extend(now.div_euclid(1_000_000_000).to_ne_bytes());
                sample.extend((now.rem_euclid(1_000_000_000) / 1000).to_ne_bytes());
                sample.extend(error.to_ne_bytes());
                for field in [0i32, 0, 0, 0x534f_434b] {
                    sample.extend(field.to_ne_bytes());
                }
                // Before ntpxd has made the socket, nothing is there to send to.
                let _ = socket.send_to(&sample, &path);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Self { _worker: worker }
    }
}
