//! The real programs the end-to-end tests run inside namespaces: ntpxd (built from this
//! workspace), chronyd and ntpdig (from Debian).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use ntp_userspace::control::{self, Request, Response, ServerStats};

use crate::netns::Netns;

/// Where the workspace's binaries are: `NTPX_BIN_DIR` (set by `cargo xtask test`) or the
/// workspace's release target directory (the tests run the daemon as it ships).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("NTPX_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --release --bins, or use cargo xtask test)",
        path.display()
    );
    path
}

/// A private directory for a test's files (sockets, configs, logs), mode 700 as chronyd wants
/// for its command socket.
pub fn scratch_dir() -> tempfile::TempDir {
    let dir =
        tempfile::Builder::new().prefix("ntpx-test-").tempdir().expect("a temporary directory");
    fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod 700");
    dir
}

/// A process running in a namespace; stopped (SIGTERM, then SIGKILL) when dropped. Its log is
/// printed if the test is failing.
pub struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Runs `program` in `netns`, its output to `log`.
    pub fn spawn(
        name: &'static str,
        netns: &Netns,
        program: &Path,
        args: &[&str],
        log: PathBuf,
    ) -> Self {
        let file = fs::File::create(&log).expect("a log file");
        let child = netns
            .command(program.to_str().expect("a UTF-8 path"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name, child, log }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("kill");
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process and returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // `ip netns exec` execs the program, so the child is the program itself.
        let _ = nix::sys::signal::kill(self.pid(), Signal::SIGCONT);
        let _ = nix::sys::signal::kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- {} log ({}) ---\n{}", self.name, self.log.display(), self.log());
        }
    }
}

/// ntpxd in a namespace, run with `-d -x` (foreground, never touching the clock).
pub struct Ntpxd {
    pub process: Process,
    pub socket: PathBuf,
    /// The configuration file it reads (and rereads on SIGHUP).
    pub config_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ntpxd {
    /// Starts ntpxd with `config` (its bindcmdaddress and pidfile are added) and waits until
    /// its control socket answers.
    pub fn start(netns: &Netns, config: &str) -> Self {
        let ntpxd = Self::spawn(netns, config, &[]);
        ntpxd.wait_for_the_control_socket();
        ntpxd
    }

    fn wait_for_the_control_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while control::call(&self.socket, &Request::ServerStats).is_err() {
            assert!(Instant::now() < deadline, "ntpxd did not start:\n{}", self.process.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts ntpxd as [`Ntpxd::start`] does, run by `wrapper` (a command that runs the rest of
    /// its arguments in its place, such as `prlimit --nofile=64:4096`).
    pub fn start_under(netns: &Netns, config: &str, wrapper: &[&str]) -> Self {
        let ntpxd = Self::spawn(netns, config, wrapper);
        ntpxd.wait_for_the_control_socket();
        ntpxd
    }

    /// Fills the client table (the LRU hash of `entries` entries) with `entries` clients in
    /// 10.128.0.0/9, as if each had sent one request.
    pub fn fill_client_table(&self, entries: u32) {
        use aya::maps::{HashMap, Map, MapData};
        use ntp_common::ratelimit::{ClientRecord, RateLimit};
        let fdinfo = fs::read_dir(format!("/proc/{}/fdinfo", self.process.pid())).unwrap();
        let field = |text: &str, name: &str| -> Option<u64> {
            text.lines().find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        };
        const BPF_MAP_TYPE_LRU_HASH: u64 = 9;
        let id = fdinfo
            .filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
            .find(|text| {
                field(text, "map_type:") == Some(BPF_MAP_TYPE_LRU_HASH)
                    && field(text, "max_entries:") == Some(u64::from(entries))
            })
            .and_then(|text| field(&text, "map_id:"))
            .expect("ntpxd's client table");
        let map = MapData::from_id(id as u32).unwrap();
        let mut table: HashMap<_, [u8; 16], ClientRecord> =
            HashMap::try_from(Map::LruHashMap(map)).unwrap();
        let mut record = ClientRecord::new(&RateLimit::DISABLED);
        record.hits = 1;
        for i in 0..entries {
            let [_, b, c, d] = i.to_be_bytes();
            let address = std::net::Ipv4Addr::new(10, 128 | b, c, d);
            table.insert(ntp_userspace::client_log::key_of(address.into()), record, 0).unwrap();
        }
    }

    /// Starts ntpxd with a `config` it must refuse, and returns its exit status and log.
    pub fn start_expecting_failure(
        netns: &Netns,
        config: &str,
    ) -> (std::process::ExitStatus, String) {
        let mut ntpxd = Self::spawn(netns, config, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = ntpxd.process.child.try_wait() {
                return (status, ntpxd.process.log());
            }
            assert!(Instant::now() < deadline, "ntpxd kept running:\n{}", ntpxd.process.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(netns: &Netns, config: &str, wrapper: &[&str]) -> Self {
        let dir = scratch_dir();
        let socket = dir.path().join("ntpxd.sock");
        let config_path = dir.path().join("ntpxd.conf");
        fs::write(&config_path, Self::complete(&socket, config)).expect("writing the config");
        let log = dir.path().join("ntpxd.log");
        let process = Self::spawn_process(netns, &config_path, log, wrapper);
        Self { process, socket, config_file: config_path, _dir: dir }
    }

    /// ntpxd on `config`, run by `wrapper` when there is one.
    fn spawn_process(netns: &Netns, config: &Path, log: PathBuf, wrapper: &[&str]) -> Process {
        let ntpxd = binary("ntpxd");
        let command = [ntpxd.to_str().unwrap(), "-d", "-x", "-f", config.to_str().unwrap()];
        let all: Vec<&str> = wrapper.iter().copied().chain(command).collect();
        Process::spawn("ntpxd", netns, Path::new(all[0]), &all[1..], log)
    }

    /// Kills ntpxd as a crash would (SIGKILL: no cleanup), leaving its pidfile and control
    /// socket behind.
    pub fn crash(&mut self) {
        self.process.signal(Signal::SIGKILL);
        let status = self.process.stop().expect("an exit status");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    }

    /// Starts ntpxd again on the same configuration, pidfile and control socket (what a
    /// crashed one left behind included), logging to `log_name` beside the first log; returns
    /// when its control socket answers.
    pub fn restart(&mut self, netns: &Netns, log_name: &str) {
        let log = self.config_file.with_file_name(log_name);
        self.process = Self::spawn_process(netns, &self.config_file, log, &[]);
        self.wait_for_the_control_socket();
    }

    /// `config` with the test's control socket, pidfile and (unless it names one) chronyc's
    /// socket.
    fn complete(socket: &Path, config: &str) -> String {
        let pidfile = socket.with_file_name("ntpxd.pid");
        let chronyc = if config.lines().any(|line| line.starts_with("chronycsocket ")) {
            String::new()
        } else {
            format!("chronycsocket {}\n", Self::chronyc_socket(socket).display())
        };
        format!(
            "{config}\nbindcmdaddress {}\n{chronyc}pidfile {}\n",
            socket.display(),
            pidfile.display()
        )
    }

    fn chronyc_socket(control_socket: &Path) -> PathBuf {
        control_socket.with_file_name("chronyd.sock")
    }

    /// Runs Debian's chronyc against this daemon (`chronyc -h SOCKET -n ARGS`): its output
    /// (standard output and error), and whether it succeeded.
    pub fn chronyc(&self, args: &[&str]) -> (String, bool) {
        let mut command = std::process::Command::new("chronyc");
        command.arg("-h").arg(Self::chronyc_socket(&self.socket));
        chronyc_output(command.arg("-n").args(args))
    }

    /// Replaces the configuration file (to be reread on SIGHUP or `ntpxc reload`).
    pub fn rewrite_config(&self, config: &str) {
        fs::write(&self.config_file, Self::complete(&self.socket, config))
            .expect("writing the config");
    }

    /// Runs ntpxc against this daemon; its standard output, or its standard error on failure.
    pub fn ntpxc(&self, args: &[&str]) -> Result<String, String> {
        let output = std::process::Command::new(binary("ntpxc"))
            .arg("-h")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("ntpxc");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    pub fn serverstats(&self) -> ServerStats {
        match control::call(&self.socket, &Request::ServerStats).expect("ntpxd's control socket") {
            Response::ServerStats(stats) => *stats,
            other => panic!("unexpected response {other:?}"),
        }
    }
}

/// Runs Debian's chronyc in `netns` against `host`'s UDP command port (`chronyc -h HOST -n
/// ARGS`), as [`Ntpxd::chronyc`].
pub fn chronyc_over_udp(netns: &Netns, host: &str, args: &[&str]) -> (String, bool) {
    chronyc_output(netns.command("chronyc").args(["-h", host, "-n"]).args(args))
}

/// What chronyc printed, and whether it succeeded; the exchange is logged for the test's
/// output.
fn chronyc_output(command: &mut std::process::Command) -> (String, bool) {
    let output = command.output().expect("chronyc");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let words: Vec<_> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy())
        .collect();
    eprintln!("$ {} ({})\n{text}", words.join(" "), output.status);
    (text, output.status.success())
}

/// A request of chronyc's protocol (version 6) for `tracking` (command 33), padded to its
/// reply's 104 bytes, as chronyc sends it.
pub fn chronyc_tracking_request() -> Vec<u8> {
    let mut request = vec![0u8; 104];
    request[..2].copy_from_slice(&[6, 1]);
    request[4..6].copy_from_slice(&33u16.to_be_bytes());
    request
}

/// chronyd in a namespace with `-x` (never touching the clock), as a client or a server.
pub struct Chronyd {
    pub process: Process,
    pub socket: PathBuf,
    netns_name: String,
    _dir: tempfile::TempDir,
}

impl Chronyd {
    pub fn start(netns: &Netns, config: &str) -> Self {
        let dir = scratch_dir();
        let socket = dir.path().join("chronyd.sock");
        let config_path = dir.path().join("chrony.conf");
        let config = format!(
            "{config}\nbindcmdaddress {}\npidfile {}\ncmdport 0\n",
            socket.display(),
            dir.path().join("chronyd.pid").display()
        );
        fs::write(&config_path, config).expect("writing the config");
        let process = Process::spawn(
            "chronyd",
            netns,
            Path::new("chronyd"),
            &["-x", "-d", "-u", "root", "-f", config_path.to_str().unwrap()],
            dir.path().join("chronyd.log"),
        );
        let chronyd = Self { process, socket, netns_name: netns.name().to_owned(), _dir: dir };
        // chronyd opens its NTP sockets before its command socket: once chronyc is answered,
        // it serves.
        let ready =
            wait_for(Duration::from_secs(20), || !chronyd.chronyc(&["tracking"]).is_empty());
        assert!(ready, "chronyd did not start:\n{}", chronyd.process.log());
        chronyd
    }

    /// How many valid replies chronyd has had from server `address` (`ntpdata`'s Total valid
    /// RX; 0 before the first).
    pub fn valid_replies(&self, address: &str) -> u32 {
        let ntpdata = self.chronyc(&["ntpdata", address]);
        report_value(&ntpdata, "Total valid RX").and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// Waits until chronyd has had `more` valid replies from `address` than it has now.
    pub fn wait_for_replies(&self, address: &str, more: u32, timeout: Duration) {
        let target = self.valid_replies(address) + more;
        let arrived = wait_for(timeout, || self.valid_replies(address) >= target);
        assert!(arrived, "chronyd had no {more} more replies from {address} in {timeout:?}");
    }

    /// The median of the offsets chronyd measures to server `address` over its next `samples`
    /// valid replies (`ntpdata`'s Offset, one per reply). One sample can carry a scheduling
    /// delay of this shared machine; the median of several is the server's own error.
    pub fn median_offset(&self, address: &str, samples: usize) -> f64 {
        self.median_of(address, "Offset", samples)
    }

    /// The median of an `ntpdata` figure in seconds (Offset, Response time, ...) over the next
    /// `samples` valid replies from `address`.
    pub fn median_of(&self, address: &str, label: &str, samples: usize) -> f64 {
        let mut values = Vec::with_capacity(samples);
        while values.len() < samples {
            self.wait_for_replies(address, 1, Duration::from_secs(30));
            let ntpdata = self.chronyc(&["-n", "ntpdata", address]);
            values.push(report_seconds(&ntpdata, label).expect("the figure in ntpdata"));
        }
        eprintln!("{label} of the replies from {address}: {values:?}");
        values.sort_by(f64::total_cmp);
        values[samples / 2]
    }

    /// Whether chronyd has `address` as its selected source (`*`).
    pub fn selects(&self, address: &str) -> bool {
        let selected = format!("^,*,{address},");
        self.chronyc(&["-c", "sources"]).lines().any(|line| line.starts_with(&selected))
    }

    /// `chronyc -h SOCKET ARGS...` in the chronyd's namespace; its standard output.
    pub fn chronyc(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.netns_name, "chronyc", "-h"];
        let socket = self.socket.to_str().unwrap().to_owned();
        all.push(&socket);
        all.extend_from_slice(args);
        let output = std::process::Command::new("ip").args(&all).output().expect("chronyc");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The value of a `chronyc`/`ntpxc` text report line such as `Stratum         : 2`.
pub fn report_value<'a>(report: &'a str, label: &str) -> Option<&'a str> {
    let line = report.lines().find(|line| line.starts_with(label))?;
    Some(line.split_once(':')?.1.trim())
}

/// A seconds value from a report line such as `Offset : +0.000000123 seconds`.
pub fn report_seconds(report: &str, label: &str) -> Option<f64> {
    report_value(report, label)?.split_whitespace().next()?.parse().ok()
}

/// Polls `condition` every 200 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
