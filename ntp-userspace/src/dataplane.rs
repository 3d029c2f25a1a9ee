//! The XDP program seen from the daemon: loading, attaching, and the maps it reads.

use std::{net::IpAddr, sync::Arc};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use ntp_common::{
    maps::{self, Counter, MAX_LOCAL_V4, MAX_LOCAL_V6, Published},
    ratelimit::RateLimit,
    state::ServerState,
};

use crate::{
    access::{Access, AccessTable},
    client_log::ClientLogSettings,
    client_table::ClientTable,
    config::ClientLogSize,
    control::AttachMode,
    sys::{
        bpf::{self, MappedPage},
        nic,
    },
};

/// The XDP program, built for the BPF target by build.rs.
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ntp-ebpf"));

/// aya's mode for an attach mode.
fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Generic => XdpMode::Skb,
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
    page: MappedPage,
    /// What the page's active slot holds.
    published: Box<Published>,
    clients: Arc<ClientTable>,
    attachments: Vec<(String, AttachMode, XdpLinkId)>,
}

impl Dataplane {
    /// Loads the program (not yet attached) to serve UDP port `port`, with room for
    /// `client_log_entries` clients (at least one is allocated). Until a state is published it
    /// passes every request on; until client log settings are published it logs no client.
    pub fn load(port: u16, client_log_entries: u32) -> anyhow::Result<Self> {
        let client_log_entries = client_log_entries.max(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::CLIENTS, client_log_entries)
            .load(PROGRAM_OBJECT)
            .map_err(|error| match error {
                // The kernel preallocates the whole client log when the map is created.
                EbpfError::MapError(MapError::CreateError { io_error, .. })
                    if bpf::is_allocation_failure(&io_error) =>
                {
                    anyhow!(
                        "the kernel cannot allocate a client log of {client_log_entries} clients \
                         (about {} MiB): lower clientloglimit or clientlog entries ({io_error})",
                        (u64::from(client_log_entries) * ClientLogSize::BYTES_PER_CLIENT) >> 20
                    )
                }
                error => anyhow::Error::new(error)
                    .context("loading the XDP program (needs root or CAP_BPF and CAP_NET_ADMIN)"),
            })?;
        program_mut(&mut ebpf)?.load().context("the kernel rejected the XDP program")?;
        let Map::Array(server) = take_map(&mut ebpf, maps::SERVER)? else {
            bail!("map {} is not an array", maps::SERVER)
        };
        let page = MappedPage::new(server)?;
        let Map::LruHashMap(clients) = take_map(&mut ebpf, maps::CLIENTS)? else {
            bail!("map {} is not an LRU hash map", maps::CLIENTS)
        };
        let settings =
            ClientLogSettings { enabled: false, limit: RateLimit::DISABLED, epoch_tai_ns: 0 };
        let clients = Arc::new(ClientTable::new(clients, settings, client_log_entries)?);
        let mut published = Box::new(<Published as bytemuck::Zeroable>::zeroed());
        published.port = port;
        let mut dataplane = Self { ebpf, page, published, clients, attachments: Vec::new() };
        dataplane.switch();
        Ok(dataplane)
    }

    /// What is published now.
    pub fn published(&self) -> Published {
        *self.published
    }

    /// A second writer of the server page (the tests race one against the program).
    pub fn page_writer(&self) -> anyhow::Result<PageWriter> {
        Ok(PageWriter(self.page.try_clone()?))
    }

    /// The client log, shared with the slow path.
    pub fn clients(&self) -> Arc<ClientTable> {
        self.clients.clone()
    }

    /// Sets how clients are logged and limited, in the kernel and the slow path at once.
    pub fn set_client_log(&mut self, settings: ClientLogSettings) {
        self.clients.set_settings(settings);
        self.published.client_log = u8::from(settings.enabled);
        self.published.limit = settings.limit;
        self.published.client_log_epoch_tai_ns = settings.epoch_tai_ns;
        self.switch();
    }

    /// Attaches to `interface`. Native mode falls back to generic where the driver cannot do
    /// it; the mode actually used is returned.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> anyhow::Result<AttachMode> {
        if !nic::interface_exists(interface) {
            bail!("cannot attach XDP to {interface}: there is no such interface");
        }
        if nic::keep_vlan_tags_in_frames(interface)
            .with_context(|| format!("cannot attach XDP to {interface}"))?
        {
            tracing::info!(
                interface,
                "turned rx-vlan-offload off, so that XDP sees clients' VLAN tags \
                 (`ethtool -K {interface} rxvlan on` turns it back on once ntpxd is gone)"
            );
        }
        let program = program_mut(&mut self.ebpf)?;
        let (used, link) = match program.attach(interface, xdp_mode(mode)) {
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

    /// Publishes new states, true and (with `leapsmear`) smeared (the port and local addresses
    /// stay).
    pub fn publish(&mut self, state: &ServerState, smeared: Option<&ServerState>) {
        self.published.state = *state;
        self.published.smeared =
            smeared.copied().unwrap_or_else(<ServerState as bytemuck::Zeroable>::zeroed);
        self.switch();
    }

    /// Sets the addresses the program answers for, and those of them served smeared time,
    /// from the next [`Self::publish`] on (one switch for both). Beyond the page's room, the
    /// program passes requests to further addresses to the slow path.
    pub fn set_local_addresses(&mut self, addresses: &[IpAddr], smeared: &[IpAddr]) {
        let v4: Vec<u32> = addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(u32::from_ne_bytes(a.octets())),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<[u64; 2]> = addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(_) => None,
                IpAddr::V6(a) => {
                    let b = a.octets();
                    Some([
                        u64::from_ne_bytes(b[..8].try_into().expect("8 bytes")),
                        u64::from_ne_bytes(b[8..].try_into().expect("8 bytes")),
                    ])
                }
            })
            .collect();
        if v4.len() > MAX_LOCAL_V4 || v6.len() > MAX_LOCAL_V6 {
            tracing::warn!(
                ipv4 = v4.len(),
                ipv6 = v6.len(),
                "more local addresses than the XDP program checks ({MAX_LOCAL_V4} IPv4, \
                 {MAX_LOCAL_V6} IPv6): requests to the others go to the slow path; \
                 bindaddress narrows the set"
            );
        }
        let bits = |family: &mut dyn Iterator<Item = &IpAddr>| {
            family
                .enumerate()
                .filter(|(_, a)| smeared.contains(a))
                .fold(0u64, |bits, (i, _)| if i < 64 { bits | 1 << i } else { bits })
        };
        let smeared_v4 = bits(&mut addresses.iter().filter(|a| a.is_ipv4()));
        let smeared_v6 = bits(&mut addresses.iter().filter(|a| a.is_ipv6())) as u32;
        let published = &mut *self.published;
        let changed = v4[..v4.len().min(MAX_LOCAL_V4)]
            != published.local_v4[..usize::from(published.local_v4_count)]
            || v6[..v6.len().min(MAX_LOCAL_V6)]
                != published.local_v6[..usize::from(published.local_v6_count)]
            || (smeared_v4, smeared_v6) != (published.smeared_v4, published.smeared_v6);
        if !changed {
            return;
        }
        (published.smeared_v4, published.smeared_v6) = (smeared_v4, smeared_v6);
        published.local_v4 = [0; MAX_LOCAL_V4];
        published.local_v6 = [[0; 2]; MAX_LOCAL_V6];
        for (slot, address) in published.local_v4.iter_mut().zip(&v4) {
            *slot = *address;
        }
        for (slot, address) in published.local_v6.iter_mut().zip(&v6) {
            *slot = *address;
        }
        published.local_v4_count = v4.len().min(MAX_LOCAL_V4) as u16;
        published.local_v6_count = v6.len().min(MAX_LOCAL_V6) as u16;
    }

    /// Writes what is to be published into the slot not in use, then makes it the active one.
    fn switch(&mut self) {
        self.page.publish(&self.published);
    }

    /// Replaces the kernel's access rules with `table`: fills the tries not in use, then switches
    /// to them, so that every address goes from the old rules to the new ones at once.
    pub fn set_access(&mut self, table: &AccessTable) -> anyhow::Result<()> {
        self.fill_access(table)?;
        self.switch();
        Ok(())
    }

    /// New access rules and client log settings, switched to together.
    pub fn reconfigure(
        &mut self,
        table: &AccessTable,
        settings: ClientLogSettings,
    ) -> anyhow::Result<()> {
        self.fill_access(table)?;
        self.set_client_log(settings);
        Ok(())
    }

    /// Fills the access tries not in use with `table` and marks them for the next switch.
    fn fill_access(&mut self, table: &AccessTable) -> anyhow::Result<()> {
        let generation = maps::next_access_generation(self.published.access_generation);
        let next = maps::access_slot(generation);
        let mut v4: LpmTrie<_, [u8; 4], u32> = map(&mut self.ebpf, maps::ACCESS_V4[next])?;
        replace_prefixes(&mut v4, table.v4_prefixes())?;
        let mut v6: LpmTrie<_, [u8; 16], u32> = map(&mut self.ebpf, maps::ACCESS_V6[next])?;
        replace_prefixes(&mut v6, table.v6_prefixes())?;
        self.published.access_generation = generation;
        Ok(())
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

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN, as if it had been received on
    /// the loopback interface.
    pub fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<TestRunOutcome> {
        self.test_run_on(frame, None)
    }

    /// Runs the program once on `frame`, as if it had been received on the interface with
    /// index `ingress_ifindex` of the calling thread's network namespace (None: the loopback).
    pub fn test_run_on(
        &mut self,
        frame: &[u8],
        ingress_ifindex: Option<u32>,
    ) -> anyhow::Result<TestRunOutcome> {
        let program = program_mut(&mut self.ebpf)?;
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the frame starts at 0.
        let context: Option<[u32; 6]> =
            ingress_ifindex.map(|ifindex| [0, frame.len() as u32, 0, ifindex, 0, 0]);
        let context = context.as_ref().map(|words| bytemuck::cast_slice::<u32, u8>(words));
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: context,
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
    let program =
        ebpf.program_mut(name).ok_or_else(|| anyhow!("the object has no program {name}"))?;
    Ok(program.try_into()?)
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the object has no map {name}"))
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| anyhow!("the object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Makes the trie (one not in use) hold exactly `prefixes`.
fn replace_prefixes<const N: usize>(
    trie: &mut LpmTrie<&mut MapData, [u8; N], u32>,
    prefixes: impl Iterator<Item = (u8, [u8; N], Access)>,
) -> anyhow::Result<()> {
    let wanted: Vec<(u8, [u8; N])> = prefixes
        .map(|(len, address, access)| {
            trie.insert(&Key::new(u32::from(len), address), access.trie_value(), 0)
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

/// A second writer of the server page, racing the daemon's (for tests of the page's protocol).
pub struct PageWriter(MappedPage);

impl PageWriter {
    pub fn publish(&mut self, published: &Published) {
        self.0.publish(published);
    }
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
