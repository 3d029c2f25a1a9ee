//! The benchmark's XDP programs, loaded and driven: the live-frames generator, the reply
//! counter, the reflector, and the cost probe.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, ProgramArray, lpm_trie::Key},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use hdrhistogram::Histogram;
use ntp_common::ratelimit::ClientRecord;
use ntp_userspace::access::AccessTable;
use ntpx_bench_ebpf::{
    CounterConfig, FRAME_LEN, GeneratorConfig, GeneratorState, HISTOGRAM_BUCKETS, bucket_low, count,
};

static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ntpx-bench-ebpf"));

fn load() -> anyhow::Result<Ebpf> {
    Ebpf::load(BENCH_OBJECT).context("loading the benchmark's XDP programs (needs root)")
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let program: &mut Xdp =
        ebpf.program_mut(name).ok_or_else(|| anyhow!("no program {name}"))?.try_into()?;
    Ok(program)
}

/// Loads `name` and attaches it natively to `interface` in the calling thread's namespace; the
/// program stays attached while the returned object lives.
fn attach(name: &str, interface: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = load()?;
    let xdp = program(&mut ebpf, name)?;
    xdp.load()?;
    xdp.attach(interface, XdpMode::Driver)
        .with_context(|| format!("attaching {name} to {interface}"))?;
    Ok(ebpf)
}

/// Sends requests through an interface with BPF_PROG_TEST_RUN live frames, paced by the
/// program: a run that comes before the next request is due drops its frame. (A test run sets up
/// and tears down a page pool, which takes tens of milliseconds here; pacing inside long runs
/// keeps that off the offered rate's schedule.)
pub struct Generator {
    ebpf: Ebpf,
    config: GeneratorConfig,
    ctx: [u8; 24],
    frame: [u8; FRAME_LEN],
    /// Runs a test run takes to last about [`Generator::RUN_TIME`].
    runs: u32,
    /// Frames sent together.
    batch: u32,
}

impl Generator {
    const RUN_TIME: Duration = Duration::from_millis(200);

    /// A generator sending out of the interface `interface_index` (of the calling thread's
    /// namespace), which must be the one the frames' source MAC belongs to.
    pub fn new(
        config: &GeneratorConfig,
        frame: [u8; FRAME_LEN],
        interface_index: u32,
    ) -> anyhow::Result<Self> {
        let mut ebpf = load()?;
        program(&mut ebpf, "ntpx_gen")?.load()?;
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex;
        // the kernel wants data_end to be the frame's length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(FRAME_LEN as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&interface_index.to_ne_bytes());
        let mut generator = Self { ebpf, config: *config, ctx, frame, runs: 100_000, batch: 64 };
        generator.set_rate(0.0)?;
        Ok(generator)
    }

    /// Paces requests at `rate` a second (0: as fast as the path takes them).
    pub fn set_rate(&mut self, rate: f64) -> anyhow::Result<()> {
        self.config.interval_ns = if rate > 0.0 { (1e9 / rate).round().max(1.0) as u64 } else { 0 };
        // Frames go out a batch at a time: a request waits for the rest of its batch, which
        // delays it against its reply. Small batches keep that delay (and so the offsets the
        // counter sees) small where throughput does not need large ones.
        self.batch = (rate / 50_000.0).clamp(1.0, 64.0) as u32;
        let mut settings: Array<_, GeneratorConfig> = Array::try_from(
            self.ebpf.map_mut("GEN_CONFIG").ok_or_else(|| anyhow!("no GEN_CONFIG"))?,
        )?;
        settings.set(0, self.config, 0)?;
        Ok(())
    }

    /// Requests sent so far.
    pub fn sent(&self) -> anyhow::Result<u64> {
        let state: PerCpuArray<_, GeneratorState> = PerCpuArray::try_from(
            self.ebpf.map("GEN_STATE").ok_or_else(|| anyhow!("no GEN_STATE"))?,
        )?;
        Ok(state.get(&0, 0)?.iter().map(|s| s.sent).sum())
    }

    /// Sends at the set rate for about `duration`.
    pub fn run_for(&mut self, duration: Duration) -> anyhow::Result<()> {
        let end = std::time::Instant::now() + duration;
        while std::time::Instant::now() < end {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let runs = (f64::from(self.runs)
                * (left.as_secs_f64() / Self::RUN_TIME.as_secs_f64()).min(1.0))
                as u32;
            let start = std::time::Instant::now();
            self.send(runs.max(1000))?;
            // Aim the next run at RUN_TIME.
            let scale = Self::RUN_TIME.as_secs_f64() / start.elapsed().as_secs_f64().max(1e-3);
            self.runs = (f64::from(self.runs) * scale.clamp(0.5, 2.0)).clamp(1e3, 1e8) as u32;
        }
        Ok(())
    }

    /// Runs the generator once on a frame, without sending it: what it would send next.
    pub fn render(&mut self) -> anyhow::Result<[u8; FRAME_LEN]> {
        let mut out = [0u8; FRAME_LEN];
        let options = TestRunOptions {
            data_in: Some(&self.frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        program(&mut self.ebpf, "ntpx_gen")?.test_run(options)?;
        Ok(out)
    }

    /// One test run of `runs` frames.
    fn send(&mut self, runs: u32) -> anyhow::Result<()> {
        let options = TestRunOptions {
            data_in: Some(&self.frame),
            ctx_in: Some(&self.ctx),
            repeat: runs,
            attrs: TestRunAttrs::new().xdp_live_frames(self.batch),
            ..TestRunOptions::default()
        };
        program(&mut self.ebpf, "ntpx_gen")?.test_run(options).context("sending live frames")?;
        Ok(())
    }
}

/// What the counter saw.
#[derive(Clone, Debug)]
pub struct Tally {
    pub valid: u64,
    pub invalid: u64,
    pub kiss_of_death: u64,
    pub negative_offsets: u64,
    /// Reply latency, ns.
    pub latency: Histogram<u64>,
    /// |NTP offset|, ns.
    pub offset: Histogram<u64>,
}

/// Counts, checks and drops replies on an interface.
pub struct Counter {
    ebpf: Ebpf,
}

impl Counter {
    pub fn attach(interface: &str, config: &CounterConfig) -> anyhow::Result<Self> {
        let mut counter = Self { ebpf: attach("ntpx_count", interface)? };
        counter.set_config(config)?;
        Ok(counter)
    }

    pub fn set_config(&mut self, config: &CounterConfig) -> anyhow::Result<()> {
        let mut settings: Array<_, CounterConfig> = Array::try_from(
            self.ebpf.map_mut("COUNT_CONFIG").ok_or_else(|| anyhow!("no COUNT_CONFIG"))?,
        )?;
        settings.set(0, config, 0)?;
        Ok(())
    }

    /// Runs the counter once on `frame` (BPF_PROG_TEST_RUN); its action.
    pub fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<u32> {
        let mut out = vec![0u8; frame.len() + 64];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        Ok(program(&mut self.ebpf, "ntpx_count")?.test_run(options)?.return_value)
    }

    /// Loads the counter without attaching it (for test runs).
    pub fn detached(config: &CounterConfig) -> anyhow::Result<Self> {
        let mut ebpf = load()?;
        program(&mut ebpf, "ntpx_count")?.load()?;
        let mut counter = Self { ebpf };
        counter.set_config(config)?;
        Ok(counter)
    }

    /// Everything counted so far (take two and subtract for an interval).
    pub fn tally(&self) -> anyhow::Result<Tally> {
        let counts = self.per_cpu_sums("COUNTS", count::COUNT)?;
        Ok(Tally {
            valid: counts[count::VALID as usize],
            invalid: counts[count::INVALID as usize],
            kiss_of_death: counts[count::KISS_OF_DEATH as usize],
            negative_offsets: counts[count::NEGATIVE_OFFSET as usize],
            latency: self.histogram("LATENCY")?,
            offset: self.histogram("OFFSET")?,
        })
    }

    fn per_cpu_sums(&self, name: &str, len: u32) -> anyhow::Result<Vec<u64>> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(name).ok_or_else(|| anyhow!("no {name}"))?)?;
        (0..len).map(|i| Ok(map.get(&i, 0)?.iter().sum())).collect()
    }

    fn histogram(&self, name: &str) -> anyhow::Result<Histogram<u64>> {
        let mut histogram = Histogram::new(3)?;
        for (bucket, count) in self.per_cpu_sums(name, HISTOGRAM_BUCKETS)?.into_iter().enumerate() {
            if count > 0 {
                // The bucket's low edge: percentiles are within its width (6 %) below.
                histogram.record_n(bucket_low(bucket as u32).max(1), count)?;
            }
        }
        Ok(histogram)
    }
}

impl Tally {
    /// What was counted between `earlier` and this tally.
    pub fn since(&self, earlier: &Tally) -> anyhow::Result<Tally> {
        let mut latency = self.latency.clone();
        latency.subtract(&earlier.latency)?;
        let mut offset = self.offset.clone();
        offset.subtract(&earlier.offset)?;
        Ok(Tally {
            valid: self.valid - earlier.valid,
            invalid: self.invalid - earlier.invalid,
            kiss_of_death: self.kiss_of_death - earlier.kiss_of_death,
            negative_offsets: self.negative_offsets - earlier.negative_offsets,
            latency,
            offset,
        })
    }
}

/// A program attached natively to an interface while this lives: the reflector, or the
/// pass-everything program that gives a veth peer the NAPI XDP_TX needs.
pub struct Attached {
    _ebpf: Ebpf,
}

impl Attached {
    pub fn reflector(interface: &str) -> anyhow::Result<Self> {
        Ok(Self { _ebpf: attach("ntpx_reflect", interface)? })
    }

    pub fn pass(interface: &str) -> anyhow::Result<Self> {
        Ok(Self { _ebpf: attach("ntpx_pass", interface)? })
    }
}

/// Measures what an XDP program costs per frame: `runs` repeated BPF_PROG_TEST_RUNs in which a
/// restoring program puts `frame` back, then tail-calls the program under measurement (each run
/// sees `frame`, not what the previous run made of it); minus the same with a program that
/// returns at once.
/// The stage probes (`benches/ebpf/src/stages.rs`): program, what it measures, and whether it
/// is a stage of a returning client's answer (the new-client probes are alternatives to the
/// known-client one).
pub const STAGES: [(&str, &str, bool); 7] = [
    ("stage_clock", "two CLOCK_TAI reads", true),
    ("stage_checksum", "the request's checksum check (bpf_csum_diff)", true),
    ("stage_access", "access trie lookup", true),
    ("stage_client_known", "client log: known client", true),
    ("stage_client_new", "client log: new client, full table (common LRU)", false),
    ("stage_client_new_per_cpu_lru", "client log: new client, full table (per-CPU LRU)", false),
    ("stage_counters", "two per-CPU counters", true),
];

pub struct CostProbe {
    ebpf: Ebpf,
}

impl CostProbe {
    pub fn new() -> anyhow::Result<Self> {
        let mut ebpf = load()?;
        for name in ["ntpx_restore_and_call", "ntpx_tx"] {
            program(&mut ebpf, name)?.load()?;
        }
        Ok(Self { ebpf })
    }

    /// Nanoseconds per run of each stage probe on `frame`, in [`STAGES`]' order: the trie holds
    /// `access`'s IPv4 rules, and the client log `known_client`.
    pub fn stage_costs(
        &mut self,
        frame: &[u8; FRAME_LEN],
        access: &AccessTable,
        known_client: [u8; 16],
        runs: u32,
    ) -> anyhow::Result<Vec<f64>> {
        let mut stages = load()?;
        {
            let mut trie: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(
                stages.map_mut("STAGE_ACCESS").ok_or_else(|| anyhow!("no STAGE_ACCESS"))?,
            )?;
            for (bits, address, access) in access.v4_prefixes() {
                trie.insert(&Key::new(bits.into(), address), access.trie_value(), 0)?;
            }
            let mut clients: HashMap<_, [u8; 16], ClientRecord> = HashMap::try_from(
                stages.map_mut("STAGE_CLIENTS").ok_or_else(|| anyhow!("no STAGE_CLIENTS"))?,
            )?;
            clients.insert(known_client, ClientRecord::default(), 0)?;
        }
        let mut costs = Vec::with_capacity(STAGES.len());
        for (name, _, _) in STAGES {
            let stage = program(&mut stages, name)?;
            stage.load()?;
            costs.push(self.cost(stage, frame, runs)?);
        }
        Ok(costs)
    }

    /// Nanoseconds per run of `target` on `frame` (which must be a FRAME_LEN-byte frame).
    pub fn cost(
        &mut self,
        target: &Xdp,
        frame: &[u8; FRAME_LEN],
        runs: u32,
    ) -> anyhow::Result<f64> {
        let with_target = self.per_run(Some(target), frame, runs)?;
        let baseline = self.per_run(None, frame, runs)?;
        Ok(with_target - baseline)
    }

    fn per_run(
        &mut self,
        target: Option<&Xdp>,
        frame: &[u8; FRAME_LEN],
        runs: u32,
    ) -> anyhow::Result<f64> {
        let words: [u16; FRAME_LEN / 2] =
            std::array::from_fn(|i| u16::from_ne_bytes([frame[2 * i], frame[2 * i + 1]]));
        let mut template: Array<_, [u16; FRAME_LEN / 2]> =
            Array::try_from(self.ebpf.map_mut("TEMPLATE").ok_or_else(|| anyhow!("no TEMPLATE"))?)?;
        template.set(0, words, 0)?;
        let tx_fd = program(&mut self.ebpf, "ntpx_tx")?.fd()?.try_clone()?;
        let mut targets: ProgramArray<_> = ProgramArray::try_from(
            self.ebpf.map_mut("TARGET").ok_or_else(|| anyhow!("no TARGET"))?,
        )?;
        match target {
            Some(target) => targets.set(0, target.fd()?, 0)?,
            None => targets.set(0, &tx_fd, 0)?,
        }
        let mut out = [0u8; FRAME_LEN + 64];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: runs,
            ..TestRunOptions::default()
        };
        let result = program(&mut self.ebpf, "ntpx_restore_and_call")?.test_run(options)?;
        Ok(duration_ns(result.duration))
    }
}

fn duration_ns(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}
