//! The XDP program seen from the daemon: loading, attaching, and the maps it reads.

use std::net::IpAddr;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        TestRun, TestRunOptions, Xdp, XdpMode,
        xdp::XdpLinkId,
    },
};
use ntp_common::{
    maps::{self, ACCESS_ALLOW, ACCESS_DENY, Counter},
    state::ServerState,
};

use crate::access::{Access, AccessTable};

/// The XDP program, built for the BPF target by build.rs.
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ntp-ebpf"));

/// How to attach the program to an interface (the `xdp IFACE [native|generic]` directive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver; the fastest, where the driver supports it.
    Native,
    /// In the kernel's network stack, after the socket buffer is built; works everywhere.
    Generic,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }
}

/// What BPF_PROG_TEST_RUN made of one frame.
#[derive(Debug)]
pub struct TestRunOutcome {
    /// The XDP action (`XDP_PASS`, `XDP_TX`, ...).
    pub action: u32,
    /// The frame after the program ran.
    pub frame: Vec<u8>,
    /// How long the program ran, as the kernel measured it.
    pub duration: std::time::Duration,
}

/// The loaded program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    active_slot: u32,
    attachments: Vec<(String, AttachMode, XdpLinkId)>,
}

impl Dataplane {
    /// Loads the program (not yet attached) to serve UDP port `port`.
    pub fn load(port: u16) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .override_global(maps::GLOBAL_NTP_PORT, &port, true)
            .load(PROGRAM_OBJECT)
            .context("loading the XDP program (needs root or CAP_BPF and CAP_NET_ADMIN)")?;
        program_mut(&mut ebpf)?.load().context("the kernel rejected the XDP program")?;
        Ok(Self { ebpf, active_slot: 0, attachments: Vec::new() })
    }

    /// Attaches to `interface`. Native mode falls back to generic where the driver cannot do
    /// it; the mode actually used is returned.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> anyhow::Result<AttachMode> {
        let program = program_mut(&mut self.ebpf)?;
        let (used, link) = match program.attach(interface, mode.xdp_mode()) {
            Ok(link) => (mode, link),
            Err(native_error) if mode == AttachMode::Native => {
                let link = program.attach(interface, XdpMode::Skb).map_err(|generic_error| {
                    anyhow!(
                        "cannot attach XDP to {interface}: native mode failed ({}), generic mode \
                         failed ({})",
                        error_chain(&native_error),
                        error_chain(&generic_error)
                    )
                })?;
                tracing::warn!(
                    interface,
                    error = %error_chain(&native_error),
                    "native XDP is not available, attached in generic mode"
                );
                (AttachMode::Generic, link)
            }
            Err(error) => {
                return Err(anyhow!("cannot attach XDP to {interface}: {}", error_chain(&error)));
            }
        };
        self.attachments.push((interface.to_owned(), used, link));
        Ok(used)
    }

    /// The interfaces the program is attached to, with the mode used.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.attachments.iter().map(|(interface, mode, _)| (interface.as_str(), *mode))
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        let program = program_mut(&mut self.ebpf)?;
        for (interface, _, link) in self.attachments.drain(..) {
            program.detach(link).with_context(|| format!("detaching XDP from {interface}"))?;
        }
        Ok(())
    }

    /// Publishes a new state: into the slot not in use, then switches to it (see
    /// `ntp_common::maps::ACTIVE_STATE` for why the switch cannot be seen half-done).
    pub fn publish(&mut self, state: &ServerState) -> anyhow::Result<()> {
        let next = (self.active_slot + 1) % maps::STATE_SLOTS;
        let mut slots: Array<_, ServerState> = map(&mut self.ebpf, maps::SERVER_STATE)?;
        slots.set(next, state, 0).context("writing the server state")?;
        let mut active: Array<_, u32> = map(&mut self.ebpf, maps::ACTIVE_STATE)?;
        active.set(0, next, 0).context("switching the server state")?;
        self.active_slot = next;
        Ok(())
    }

    /// Replaces the kernel's access rules with `table`.
    pub fn set_access(&mut self, table: &AccessTable) -> anyhow::Result<()> {
        let mut v4: LpmTrie<_, [u8; 4], u32> = map(&mut self.ebpf, maps::ACCESS_V4)?;
        replace_prefixes(&mut v4, table.v4_prefixes())?;
        let mut v6: LpmTrie<_, [u8; 16], u32> = map(&mut self.ebpf, maps::ACCESS_V6)?;
        replace_prefixes(&mut v6, table.v6_prefixes())
    }

    /// Sets the addresses the program answers for.
    pub fn set_local_addresses(&mut self, addresses: &[IpAddr]) -> anyhow::Result<()> {
        let mut v4: HashMap<_, [u8; 4], u32> = map(&mut self.ebpf, maps::LOCAL_V4)?;
        replace_set(&mut v4, addresses.iter().filter_map(|a| match a {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        }))?;
        let mut v6: HashMap<_, [u8; 16], u32> = map(&mut self.ebpf, maps::LOCAL_V6)?;
        replace_set(&mut v6, addresses.iter().filter_map(|a| match a {
            IpAddr::V4(_) => None,
            IpAddr::V6(a) => Some(a.octets()),
        }))
    }

    /// The counters, summed over CPUs, indexed by [`Counter`].
    pub fn counters(&mut self) -> anyhow::Result<[u64; Counter::COUNT as usize]> {
        let counters: PerCpuArray<_, u64> = map(&mut self.ebpf, maps::COUNTERS)?;
        let mut totals = [0; Counter::COUNT as usize];
        for counter in Counter::ALL {
            let per_cpu = counters.get(&(counter as u32), 0).context("reading counters")?;
            totals[counter as usize] = per_cpu.iter().sum();
        }
        Ok(totals)
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN, as if it had been received.
    pub fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<TestRunOutcome> {
        let program = program_mut(&mut self.ebpf)?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome { action: result.return_value, frame: out, duration: result.duration })
    }

    /// The loaded program, for tools that drive it directly (benchmarks).
    pub fn program_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        program_mut(&mut self.ebpf)
    }
}

/// The pass-everything program attached to the peer of a veth, so that the veth delivers the
/// XDP_TX replies sent to it at once (a veth flushes them only to a peer running XDP). Detached
/// when dropped.
pub struct VethPeerProgram {
    _ebpf: Ebpf,
}

impl VethPeerProgram {
    /// Attaches to `interface` (native mode) in the calling thread's network namespace.
    pub fn attach(interface: &str) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(PROGRAM_OBJECT).context("loading the XDP object")?;
        let program: &mut Xdp = named_program_mut(&mut ebpf, maps::PASS_PROGRAM)?;
        program.load()?;
        program
            .attach(interface, XdpMode::Driver)
            .with_context(|| format!("attaching {} to {interface}", maps::PASS_PROGRAM))?;
        Ok(Self { _ebpf: ebpf })
    }
}

fn program_mut(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    named_program_mut(ebpf, maps::PROGRAM)
}

fn named_program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("the object has no program {name}"))?;
    Ok(program.try_into()?)
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| anyhow!("the object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Makes the trie hold exactly `prefixes`: new and changed entries first, then removals, so an
/// unchanged rule is never missing.
fn replace_prefixes<const N: usize>(
    trie: &mut LpmTrie<&mut MapData, [u8; N], u32>,
    prefixes: impl Iterator<Item = (u8, [u8; N], Access)>,
) -> anyhow::Result<()> {
    let wanted: Vec<(u8, [u8; N])> = prefixes
        .map(|(len, address, access)| {
            let value = match access {
                Access::Allow => ACCESS_ALLOW,
                Access::Deny => ACCESS_DENY,
            };
            trie.insert(&Key::new(u32::from(len), address), value, 0)
                .context("inserting an access rule")?;
            Ok((len, address))
        })
        .collect::<anyhow::Result<_>>()?;
    let stale: Vec<Key<[u8; N]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.contains(&(key.prefix_len() as u8, key.data())))
        .collect();
    for key in stale {
        trie.remove(&key).context("removing an access rule")?;
    }
    Ok(())
}

/// Makes the hash map's key set exactly `keys`, touching only what changed (every update of a
/// hash map entry gives it new memory, cold for the program's next lookup).
fn replace_set<const N: usize>(
    set: &mut HashMap<&mut MapData, [u8; N], u32>,
    keys: impl Iterator<Item = [u8; N]>,
) -> anyhow::Result<()> {
    let wanted: Vec<[u8; N]> = keys.collect();
    let present: Vec<[u8; N]> = set.keys().filter_map(Result::ok).collect();
    for key in wanted.iter().filter(|key| !present.contains(key)) {
        set.insert(key, 1, 0).context("inserting a local address")?;
    }
    for key in present.iter().filter(|key| !wanted.contains(key)) {
        set.remove(key).context("removing a local address")?;
    }
    Ok(())
}

/// An error and its causes on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
