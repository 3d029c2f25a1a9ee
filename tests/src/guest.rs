//! A throwaway Debian guest under qemu, with its own kernel clock and systemd: where the tests
//! install the .deb, run ntpxd as a service, step and discipline a real clock, and set it to
//! any date, without touching this machine's clock.
//!
//! The guest runs in a network namespace of its own that holds only a loopback: qemu's user
//! network makes that namespace's 127.0.0.1 the guest's 10.0.2.2 (a server the test starts
//! there serves the guest), and the guest reaches nothing else. Its disk is the cached image
//! with `snapshot=on`, so every boot starts clean. Commands reach the guest through a 9p share
//! where its agent (tests/guest/ntpx-agent) runs each `requests/ID.sh` it finds.
//!
//! `cargo xtask vmtest` builds the image and the packages and names them in `NTPX_GUEST_IMAGE`,
//! `NTPX_QEMU_DIR`, `NTPX_DEB` and `NTPX_RPM`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{netns::Netns, peers::scratch_dir};

/// The guest's view of this namespace's 127.0.0.1.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
/// This namespace's UDP port forwarded to the guest's port 123.
pub const GUEST_NTP_PORT_ON_HOST: u16 = 11123;
/// A second address of the guest's, which a test may add (a `leapsmear` address), and this
/// namespace's UDP port forwarded to its port 123.
pub const GUEST_SECOND_ADDRESS: &str = "10.0.2.16";
pub const GUEST_SECOND_NTP_PORT_ON_HOST: u16 = 11124;
/// This namespace's TCP port forwarded to the guest's NTS-KE port, 4460.
pub const GUEST_NTS_KE_PORT_ON_HOST: u16 = 14460;

/// TCG boots a Debian guest to userspace in 40 to 60 s here; leave room for a loaded machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a command may run in the guest (an apt install under emulation takes a minute).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

fn required_env(name: &str) -> PathBuf {
    std::env::var_os(name).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{name} is not set: run the guest VM tests with `cargo xtask vmtest`")
    })
}

/// What a command run in the guest printed, and its exit code.
#[derive(Debug)]
pub struct Output {
    pub text: String,
    pub code: i32,
}

pub struct Guest {
    /// The guest's network namespace; servers for the guest run here.
    pub netns: Netns,
    qemu: Child,
    share: PathBuf,
    serial_log: PathBuf,
    boot_id: String,
    next_request: AtomicU32,
    _dir: tempfile::TempDir,
}

impl Guest {
    /// Boots a fresh guest and waits for its agent.
    pub fn boot() -> Self {
        Self::boot_with(&[])
    }

    /// Boots a fresh guest with more qemu arguments (devices) and waits for its agent.
    pub fn boot_with(qemu_args: &[&str]) -> Self {
        let image = required_env("NTPX_GUEST_IMAGE");
        let qemu = required_env("NTPX_QEMU_DIR");
        let dir = scratch_dir();
        let share = dir.path().join("share");
        fs::create_dir_all(share.join("requests")).expect("the share");
        let serial_log = dir.path().join("serial.log");
        let netns = Netns::new("guest");
        let libs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
            .map(|lib| qemu.join(lib).display().to_string())
            .join(":");
        let mut command = netns.command(qemu.join("usr/bin/qemu-system-x86_64").to_str().unwrap());
        command
            .env("LD_LIBRARY_PATH", libs)
            .env("QEMU_MODULE_DIR", qemu.join("usr/lib/x86_64-linux-gnu/qemu"));
        for firmware in ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"] {
            command.arg("-L").arg(qemu.join(firmware));
        }
        // KVM here is PVM, under which a stock Debian kernel hangs: software emulation.
        command
            .args(["-accel", "tcg,thread=single", "-cpu", "max", "-m", "1024", "-smp", "1"])
            .args(["-nographic", "-no-user-config", "-nodefaults"])
            .arg("-serial")
            .arg(format!("file:{}", serial_log.display()))
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initrd.img"))
            .args([
                "-append",
                "console=ttyS0 root=/dev/vda rw net.ifnames=0 systemd.journald.forward_to_console=1",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,snapshot=on",
                image.join("rootfs.img").display()
            ))
            .arg("-virtfs")
            .arg(format!("local,path={},mount_tag=host,security_model=none", share.display()))
            .args(["-netdev", &format!(
                "user,id=net0,hostfwd=udp:127.0.0.1:{GUEST_NTP_PORT_ON_HOST}-:123,\
                 hostfwd=udp:127.0.0.1:{GUEST_SECOND_NTP_PORT_ON_HOST}-{GUEST_SECOND_ADDRESS}:123,\
                 hostfwd=tcp:127.0.0.1:{GUEST_NTS_KE_PORT_ON_HOST}-:4460"
            )])
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .args(qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("qemu.log")).expect("qemu's log"));
        let qemu = command.spawn().expect("starting qemu");
        let mut guest = Self {
            netns,
            qemu,
            share,
            serial_log,
            boot_id: String::new(),
            next_request: AtomicU32::new(0),
            _dir: dir,
        };
        guest.wait_for_boot();
        guest
    }

    /// Waits until the agent announces a boot other than the last one seen.
    fn wait_for_boot(&mut self) {
        let started = Instant::now();
        loop {
            let boot_id = fs::read_to_string(self.share.join("boot")).unwrap_or_default();
            if !boot_id.trim().is_empty() && boot_id != self.boot_id {
                self.boot_id = boot_id;
                eprintln!("guest: booted in {:.0} s", started.elapsed().as_secs_f64());
                return;
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                panic!("qemu exited ({status}) before the guest booted");
            }
            assert!(started.elapsed() < BOOT_TIMEOUT, "the guest did not boot in time");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs a shell script in the guest (as root) and returns its output and exit code.
    pub fn sh(&self, script: &str) -> Output {
        let id = self.send(script);
        let replies = self.share.join("replies");
        let code_file = replies.join(format!("{id}.rc"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while !code_file.exists() {
            assert!(Instant::now() < deadline, "the guest did not finish in time:\n{script}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let code = fs::read_to_string(&code_file).expect("the exit code");
        let text = fs::read_to_string(replies.join(format!("{id}.out"))).unwrap_or_default();
        Output { text, code: code.trim().parse().expect("an exit code") }
    }

    /// Runs a shell script in the guest; its output, and a panic if it fails.
    pub fn run(&self, script: &str) -> String {
        let output = self.sh(script);
        assert_eq!(output.code, 0, "in the guest, `{script}` failed:\n{}", output.text);
        output.text
    }

    fn send(&self, script: &str) -> u32 {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let requests = self.share.join("requests");
        let partial = requests.join(format!("{id}.partial"));
        fs::write(&partial, format!("set -o pipefail\n{script}\n")).expect("a request");
        fs::rename(&partial, requests.join(format!("{id}.sh"))).expect("a request");
        id
    }

    /// Polls `script` in the guest until it succeeds; the time that took, or None.
    pub fn wait_until(&self, script: &str, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.sh(script).code == 0 {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    }

    /// Puts a file where the guest sees it; its path in the guest.
    pub fn share_file(&self, file: &Path) -> String {
        let name = file.file_name().expect("a file name");
        fs::copy(file, self.share.join(name)).expect("copying into the share");
        format!("/mnt/host/{}", name.to_string_lossy())
    }

    /// Writes `path` in the guest.
    pub fn write(&self, path: &str, contents: &str) {
        let name = format!("file-{}", self.next_request.fetch_add(1, Ordering::Relaxed));
        fs::write(self.share.join(&name), contents).expect("writing into the share");
        self.run(&format!("install -D -m 644 /mnt/host/{name} {path}"));
    }

    /// Reboots the guest and waits for it to come back.
    pub fn reboot(&mut self) {
        self.send("systemctl reboot");
        self.wait_for_boot();
    }

    /// The guest's console so far (kernel and journal lines).
    fn console(&self) -> String {
        fs::read_to_string(&self.serial_log).unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // The disk is a snapshot: nothing to shut down cleanly.
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if std::thread::panicking() {
            let console = self.console();
            let tail: Vec<&str> = console.lines().rev().take(80).collect();
            eprintln!("--- guest console (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The deb `cargo xtask vmtest` built.
pub fn deb() -> PathBuf {
    required_env("NTPX_DEB")
}

/// The RPM `cargo xtask vmtest` built.
pub fn rpm() -> PathBuf {
    required_env("NTPX_RPM")
}
