//! The reload policy: what a reload applies, and what waits for a restart.

use super::model::Config;

/// What a reload applies: `new`, except for what only a restart can change, which keeps its
/// running value from `old` (so that the configuration kept always describes what runs); and
/// the names of those parts that changed.
pub fn reloadable(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    fn keep<T: PartialEq + Clone>(what: &'static str, new: &mut T, old: &T, kept: &mut Vec<&str>) {
        if new != old {
            kept.push(what);
            new.clone_from(old);
        }
    }
    let mut kept = Vec::new();
    keep("port", &mut new.port, &old.port, &mut kept);
    keep("bindaddress", &mut new.bind_v4, &old.bind_v4, &mut kept);
    keep("bindaddress", &mut new.bind_v6, &old.bind_v6, &mut kept);
    keep("bindcmdaddress", &mut new.command_socket, &old.command_socket, &mut kept);
    keep(
        "chronyc's sockets (chronycsocket, cmdport, bindcmdaddress, cmdallow, cmddeny)",
        &mut new.chronyc,
        &old.chronyc,
        &mut kept,
    );
    keep("metricsaddress", &mut new.metrics, &old.metrics, &mut kept);
    keep(
        "NTS (ntsservercert, ntsserverkey, ntsport, ntsdumpdir, ...)",
        &mut new.nts,
        &old.nts,
        &mut kept,
    );
    keep("pidfile", &mut new.pidfile, &old.pidfile, &mut kept);
    keep("user", &mut new.user, &old.user, &mut kept);
    keep("xdp", &mut new.xdp, &old.xdp, &mut kept);
    keep("announce", &mut new.announce, &old.announce, &mut kept);
    keep("smoothtime", &mut new.smoothing, &old.smoothing, &mut kept);
    keep("leapsmear", &mut new.leap_smear, &old.leap_smear, &mut kept);
    keep("the sources or the clock discipline", &mut new.sync, &old.sync, &mut kept);
    // The kernel's table is sized at start (one entry under noclientlog), and rate limits live
    // in it: limits on a table sized for no clients would limit everybody.
    if new.client_log.entries() != old.client_log.entries() {
        kept.push("the client log (with its rate limits)");
        (new.client_log, new.rate_limit) = (old.client_log, old.rate_limit);
    }
    kept.dedup();
    (new, kept)
}
