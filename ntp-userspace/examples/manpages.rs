//! Writes ntpxd(8) and ntpxc(1) into DIRECTORY/man8 and DIRECTORY/man1, from the command-line definitions
//! (clap's man page generator). `cargo xtask deb` runs it; ntpx.conf(5) is written by hand
//! (`man/ntpx.conf.5`).

use std::{fs, io, path::Path};

use clap::CommandFactory as _;
use ntp_userspace::cli::{ntpxc, ntpxd};

fn main() -> io::Result<()> {
    let dir = std::env::args_os().nth(1).expect("usage: manpages DIRECTORY");
    let dir = Path::new(&dir);
    let (section8, section1) = (dir.join("man8"), dir.join("man1"));
    fs::create_dir_all(&section8)?;
    fs::create_dir_all(&section1)?;
    // A daemon's page is in section 8.
    let ntpxd = ntpxd::Args::command().name("ntpxd");
    let mut page = Vec::new();
    clap_mangen::Man::new(ntpxd).section("8").render(&mut page)?;
    fs::write(section8.join("ntpxd.8"), page)?;
    // ntpxc(1) and a page for each of its commands (ntpxc-tracking(1), ...).
    clap_mangen::generate_to(ntpxc::Args::command().name("ntpxc"), &section1)
}
