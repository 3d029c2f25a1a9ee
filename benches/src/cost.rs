//! Microbenchmarks: what the XDP program costs per request on each of its paths, and what the
//! userspace responder costs.

use std::{net::IpAddr, time::Instant};

use ntp_common::{
    maps::client_key_v4,
    responder,
    state::{MAX_STATE_AGE_NS, ReplyHeader, ServerState, TimeAnchor},
    wire::NtpHeader,
};
use ntp_userspace::{
    access::{Access, AccessRule, AccessTable, Subnet},
    client_log::ClientLogSettings,
    config::LocalReference,
    dataplane::Dataplane,
    reference::{Reference, TaiReading},
    sys::clock,
};
use ntpx_bench_ebpf::FRAME_LEN;
use ntpx_tests::frame::{Frame, UdpChecksum};

use crate::programs::{CostProbe, STAGES};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Costs {
    /// A request answered with XDP_TX (client log on).
    pub answered_ns: f64,
    /// A request passed to the kernel after full parsing (a bad UDP checksum).
    pub passed_ns: f64,
    /// A request from a denied source, dropped.
    pub denied_ns: f64,
    /// `ntp_common::responder::respond`, in userspace.
    pub responder_ns: f64,
    /// What the stages of an answer cost alone (the stage probes).
    pub stages: Vec<StageCost>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StageCost {
    pub stage: &'static str,
    /// A stage of a returning client's answer.
    pub in_answer: bool,
    pub ns: f64,
}

impl Costs {
    /// The stages' costs, and the rest of an answer (parsing, checks, the reply's writing).
    pub fn stage_table(&self) -> String {
        let mut table = String::from("\n| stage of an answer | ns |\n|---|---:|\n");
        for stage in &self.stages {
            table += &format!("| {} | {:.0} |\n", stage.stage, stage.ns);
        }
        let answer_stages: f64 = self.stages.iter().filter(|s| s.in_answer).map(|s| s.ns).sum();
        table += &format!(
            "| the rest (answer {:.0} ns less the stages above but new clients) | {:.0} |\n",
            self.answered_ns,
            self.answered_ns - answer_stages
        );
        table
    }
}

const RUNS: u32 = 200_000;

pub fn measure() -> anyhow::Result<Costs> {
    let server: IpAddr = "10.0.0.1".parse()?;
    let mut dataplane = Dataplane::load(123, 1 << 16)?;
    let rules = [
        AccessRule { access: Access::Allow, all: false, subnet: Subnet::Everything },
        AccessRule {
            access: Access::Deny,
            all: false,
            subnet: Subnet::V4("10.66.0.0".parse()?, 16),
        },
    ];
    let access = AccessTable::from_rules(&rules);
    dataplane.set_access(&access)?;
    dataplane.set_local_addresses(&[server], &[]);
    dataplane.set_client_log(ClientLogSettings {
        enabled: true,
        limit: ntp_common::ratelimit::RateLimit::DISABLED,
        epoch_tai_ns: clock::tai_ns(),
    });
    let local = LocalReference { stratum: 10, distance: 1.0 };
    let mut probe = CostProbe::new()?;
    let frame = |client: &str, checksum: UdpChecksum| -> anyhow::Result<[u8; FRAME_LEN]> {
        let mut frame = Frame::request(client.parse()?, server);
        frame.checksum = checksum;
        frame.build().try_into().map_err(|_| anyhow::anyhow!("not a {FRAME_LEN}-byte frame"))
    };
    let answered = frame("10.1.2.3", UdpChecksum::Correct)?;
    let passed = frame("10.1.2.3", UdpChecksum::Wrong)?;
    let denied = frame("10.66.2.3", UdpChecksum::Correct)?;
    let mut cost = |frame: &[u8; FRAME_LEN]| -> anyhow::Result<f64> {
        // A fresh state for each measurement (each lasts well under its freshness).
        let now = TaiReading { tai_ns: clock::tai_ns(), tai_offset_s: 0 };
        dataplane.publish(&Reference::new(Some(local), -24).state_at(now, MAX_STATE_AGE_NS), None);
        probe.cost(dataplane.program_mut()?, frame, RUNS)
    };
    let (answered_ns, passed_ns, denied_ns) = (cost(&answered)?, cost(&passed)?, cost(&denied)?);
    let stage_ns = probe.stage_costs(&answered, &access, client_key_v4([10, 1, 2, 3]), RUNS)?;
    let stages = STAGES.iter().zip(stage_ns).map(|(&(_, stage, in_answer), ns)| StageCost {
        stage,
        in_answer,
        ns,
    });
    Ok(Costs {
        answered_ns,
        passed_ns,
        denied_ns,
        responder_ns: responder_cost(),
        stages: stages.collect(),
    })
}

fn responder_cost() -> f64 {
    let anchor = TimeAnchor {
        tai_ns: clock::tai_ns(),
        served_unix_ns: clock::realtime_ns(),
        frequency: 0.0,
    };
    let state = ServerState::new(anchor, ReplyHeader::UNSYNCHRONISED, MAX_STATE_AGE_NS);
    let request =
        NtpHeader::client_request(4, 6, ntp_common::wire::NtpTimestamp::from_fixed(1)).to_bytes();
    let runs = 2_000_000u32;
    let start = Instant::now();
    let mut check = 0u8;
    for i in 0..runs {
        let at = anchor.tai_ns + u64::from(i);
        let reply =
            responder::respond(std::hint::black_box(&request), &state, at, at + 50, i8::MIN);
        check ^= reply.map(|r| r[47]).unwrap_or(0);
    }
    std::hint::black_box(check);
    start.elapsed().as_secs_f64() * 1e9 / f64::from(runs)
}
