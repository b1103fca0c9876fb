//! The switch's slot state machine (`switch-emu`'s sans-I/O [`SwitchCore`]) driven by random
//! sequences of job changes and datagrams, against a reference model written from
//! docs/wire.md ("Processing a packet"), with the invariants checked on the core itself:
//!
//! - a packet that is not accepted into a slot (any drop, a PROBE, a retransmission answered
//!   from a complete set) leaves every register untouched;
//! - an accepted DATA changes only its own (slot, set), which lies in its own job's range, so
//!   no job's packet changes another job's slots;
//! - counters add up: each datagram is counted in `packets_in` and in exactly one of the drop,
//!   `data_in`, `probes` and `results_unicast` counters; `packets_out` counts every emitted
//!   datagram; `results_multicast` = completions × workers;
//! - and the model's emitted datagrams, registers and counters equal the core's.
//!
//! An input is a byte string the harness reads choices from ([`Source`]): two jobs to start
//! with, then operations (mostly datagrams built around the jobs' current state, sometimes a
//! create, replace or unregister, sometimes raw bytes).

use crate::mutate::Source;
use crate::Harness;
use sketchreduce_switch::SwitchCore;
use sketchreduce_wire::packet::{field, HEADER_LEN, LANE_BYTES, NACK_BAD_EPOCH, NACK_UNKNOWN_JOB};
use sketchreduce_wire::{Counters, DropReason, JobCounters, JobSpec, WorkerSpec, LANE_CHOICES};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Slots in the fuzzed pool and lanes per register set (small, so snapshots are cheap).
const POOL: u32 = 48;
const MAXL: usize = 64;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SwitchHarness;

/// One (slot, set) register group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Regs {
    round: u32,
    count: u8,
    bitmap: u32,
    lanes: Vec<u32>,
}

/// Every register of the core.
fn snapshot(core: &SwitchCore) -> Vec<Regs> {
    let mut v = Vec::with_capacity(2 * POOL as usize);
    for slot in 0..POOL {
        for set in 0..2 {
            let (round, count, bitmap, lanes) = core.slot_set(slot, set).expect("own slot");
            v.push(Regs {
                round,
                count,
                bitmap,
                lanes: lanes.to_vec(),
            });
        }
    }
    v
}

/// The reference model: the same state as the core, kept by the rules of docs/wire.md.
#[derive(Debug)]
struct Model {
    jobs: BTreeMap<u16, (JobSpec, JobCounters)>,
    regs: Vec<Regs>,
    packets_in: u64,
    packets_out: u64,
    drops: [u64; DropReason::COUNT],
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Serial-number order of rounds: is `a` newer (>0), the same (0) or older (<0) than `b`?
fn newer(a: u32, b: u32) -> i32 {
    (a.wrapping_sub(b) as i32).signum()
}

impl Model {
    fn new() -> Self {
        Model {
            jobs: BTreeMap::new(),
            regs: vec![
                Regs {
                    round: 0,
                    count: 0,
                    bitmap: 0,
                    lanes: vec![0; MAXL],
                };
                2 * POOL as usize
            ],
            packets_in: 0,
            packets_out: 0,
            drops: [0; DropReason::COUNT],
        }
    }

    fn counters(&self) -> Counters {
        Counters {
            packets_in: self.packets_in,
            packets_out: self.packets_out,
            drops: self.drops,
            jobs: self.jobs.iter().map(|(&id, (_, c))| (id, *c)).collect(),
        }
    }

    /// Whether the core must accept `spec`: valid for the pool, nonzero epoch, no overlap with
    /// another job.
    fn create(&mut self, spec: &JobSpec) -> bool {
        let end = |j: &JobSpec| j.slot_base as u64 + j.slot_count as u64;
        let ok = spec.validate(POOL, MAXL as u16).is_ok()
            && spec.epoch != 0
            && !self.jobs.values().any(|(o, _)| {
                o.id != spec.id
                    && (o.slot_base as u64) < end(spec)
                    && (spec.slot_base as u64) < end(o)
            });
        if ok {
            for s in spec.slot_base..spec.slot_base + spec.slot_count {
                for set in 0..2 {
                    let r = &mut self.regs[2 * s as usize + set];
                    (r.round, r.count, r.bitmap) = (0, 0, 0);
                }
            }
            self.jobs
                .insert(spec.id, (spec.clone(), JobCounters::default()));
        }
        ok
    }

    /// The datagrams the switch must emit for `b` from `from`, updating the state.
    fn packet(&mut self, from: SocketAddr, b: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        self.packets_in += 1;
        let mut out = Vec::new();
        // Format rules are the parser's (fuzzed by the packet harness): use it.
        let valid = sketchreduce_wire::Packet::new_checked(b)
            .ok()
            .and_then(|p| sketchreduce_wire::Header::parse(&p).ok())
            .is_some();
        if !valid {
            self.drops[DropReason::Malformed as usize] += 1;
            return out;
        }
        let (kind, op, rank, job) = (b[1], b[2], b[3], be16(b, 4));
        let (lanes, epoch, slot, set) = (be16(b, 6), be32(b, 8), be32(b, 12), b[16]);
        let round = be32(b, 20);
        let (probe, data) = (kind == 3, kind == 1);
        let nack = |flags: u16, out: &mut Vec<(SocketAddr, Vec<u8>)>| {
            let mut r = b[..HEADER_LEN].to_vec();
            r[1] = 4;
            r[17] = 0;
            r[18..20].copy_from_slice(&flags.to_be_bytes());
            r[20..24].fill(0);
            r[28..32].fill(0);
            out.push((from, r));
        };
        let Some((spec, ctr)) = self.jobs.get_mut(&job) else {
            self.drops[DropReason::UnknownJob as usize] += 1;
            if probe {
                nack(NACK_UNKNOWN_JOB, &mut out);
                self.packets_out += 1;
            }
            return out;
        };
        let n = spec.workers.len();
        let reason = if epoch != spec.epoch {
            Some(DropReason::BadEpoch)
        } else if rank as usize >= n {
            Some(DropReason::BadRank)
        } else if spec.workers[rank as usize].addr != from {
            Some(DropReason::BadSource)
        } else if (slot as u64) < spec.slot_base as u64
            || slot as u64 >= spec.slot_base as u64 + spec.slot_count as u64
        {
            Some(DropReason::BadSlot)
        } else if kind == 2 || kind == 4 {
            Some(DropReason::BadKind)
        } else if data && lanes != spec.lanes {
            Some(DropReason::BadLanes)
        } else {
            None
        };
        if let Some(r) = reason {
            ctr.drops[r as usize] += 1;
            if r == DropReason::BadEpoch && probe {
                nack(NACK_BAD_EPOCH, &mut out);
                self.packets_out += 1;
            }
            return out;
        }
        let full = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
        let reg = &mut self.regs[2 * slot as usize + set as usize];
        let reply = |kind: u8, count: u8, round: u32, bitmap: u32, lanes: &[u32]| {
            let mut r = b[..HEADER_LEN].to_vec();
            r[1] = kind;
            r[17] = count;
            r[18..20].fill(0);
            r[20..24].copy_from_slice(&round.to_be_bytes());
            r[28..32].copy_from_slice(&bitmap.to_be_bytes());
            for v in lanes {
                r.extend_from_slice(&v.to_be_bytes());
            }
            r
        };
        if probe {
            ctr.probes += 1;
            self.packets_out += 1;
            out.push((from, reply(4, reg.count, reg.round, reg.bitmap, &[])));
            return out;
        }
        let nl = lanes as usize;
        let vals: Vec<u32> = b[HEADER_LEN..]
            .chunks_exact(LANE_BYTES)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let bit = 1u32 << rank;
        let load = |reg: &mut Regs| {
            reg.lanes[..nl].copy_from_slice(&vals);
            reg.bitmap = bit;
            reg.count = 1;
        };
        match newer(round, reg.round) {
            -1 => {
                ctr.drops[DropReason::Stale as usize] += 1;
                return out;
            }
            1 => {
                load(reg);
                reg.round = round;
            }
            _ if reg.bitmap & bit != 0 => {
                if reg.count as usize == n {
                    // A retransmission into a complete set: the stored result, unicast.
                    ctr.results_unicast += 1;
                    self.packets_out += 1;
                    out.push((from, reply(2, n as u8, round, full, &reg.lanes[..nl])));
                } else {
                    ctr.drops[DropReason::Duplicate as usize] += 1;
                }
                return out;
            }
            _ if reg.count as usize >= n => {
                ctr.drops[DropReason::Stale as usize] += 1;
                return out;
            }
            _ if reg.count == 0 => load(reg),
            _ => {
                for (r, v) in reg.lanes[..nl].iter_mut().zip(&vals) {
                    *r = match op {
                        0 => r.wrapping_add(*v),
                        1 => *r | *v,
                        _ => (*r).max(*v),
                    };
                }
                reg.bitmap |= bit;
                reg.count += 1;
            }
        }
        ctr.data_in += 1;
        if reg.count as usize == n {
            ctr.completions += 1;
            ctr.results_multicast += n as u64;
            self.packets_out += n as u64;
            let r = reply(2, n as u8, round, full, &reg.lanes[..nl]);
            for w in &spec.workers {
                out.push((w.addr, r.clone()));
            }
        }
        out
    }
}

fn addr(job: u16, rank: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, job as u8, rank as u8 + 1], 40000 + rank as u16))
}

/// A job spec read from `src` (sometimes invalid: the core must refuse those).
fn read_spec(src: &mut Source<'_>, id: u16) -> JobSpec {
    let lanes = match src.below(16) {
        0 => LANE_CHOICES[src.below(LANE_CHOICES.len())],
        1 => src.u16(),
        x => [32, 64][x % 2],
    };
    let workers = match src.below(16) {
        0 => src.below(40),
        _ => 1 + src.below(4),
    };
    let mut ws: Vec<WorkerSpec> = (0..workers).map(|r| WorkerSpec::at(addr(id, r))).collect();
    if workers > 1 && src.below(32) == 0 {
        ws[1].addr = ws[0].addr; // two ranks at one address: invalid
    }
    JobSpec {
        id,
        epoch: if src.below(32) == 0 { 0 } else { src.u32() | 1 },
        lanes,
        slot_base: src.below(POOL as usize + 4) as u32,
        slot_count: if src.below(32) == 0 {
            src.u32()
        } else {
            1 + src.below(8) as u32
        },
        workers: ws,
    }
}

/// A datagram read from `src`, built around the model's jobs and registers.
fn read_packet(src: &mut Source<'_>, m: &Model) -> (SocketAddr, Vec<u8>) {
    let id = [1u16, 2, 3, 1, 2, 1, 2, 4][src.below(8)];
    let job = m.jobs.get(&id).map(|(s, _)| s);
    let kind = match src.below(16) {
        0..=8 => 1,
        9..=12 => 3,
        13 => 2,
        14 => 4,
        _ => src.u8(),
    };
    let n = job.map_or(1, |j| j.workers.len());
    let rank = if src.below(8) == 0 {
        src.below(40)
    } else {
        src.below(n)
    };
    let epoch = match job {
        Some(j) if src.below(8) != 0 => j.epoch,
        _ => src.u32(),
    };
    let from = match job {
        Some(j) if rank < n && src.below(10) != 0 => j.workers[rank].addr,
        _ => addr(src.below(4) as u16, src.below(5)),
    };
    let slot = match job {
        Some(j) if src.below(8) != 0 => j.slot_base + src.below(j.slot_count as usize + 1) as u32,
        _ if src.below(2) == 0 => src.below(POOL as usize + 8) as u32,
        _ => src.u32(),
    };
    let cur = m
        .regs
        .get(2 * slot as usize + src.below(2))
        .map_or(0, |r| r.round);
    let round = match src.below(8) {
        0..=2 => cur,
        3 | 4 => cur.wrapping_add(1),
        5 => cur.wrapping_sub(1),
        6 => cur.wrapping_add(2),
        _ => src.u32(),
    };
    let mut set = (round & 1) as u8;
    if src.below(32) == 0 {
        set ^= 1 + (src.below(2) as u8) * 2; // wrong set, sometimes not even 0/1
    }
    let lanes: u16 = if kind == 1 || kind == 2 {
        match src.below(16) {
            0 => LANE_CHOICES[src.below(LANE_CHOICES.len())],
            1 => src.u16() % 80,
            _ => job.map_or(32, |j| j.lanes),
        }
    } else if src.below(16) == 0 {
        src.u16() % 8
    } else {
        0
    };
    let op = if src.below(32) == 0 {
        src.u8()
    } else {
        src.below(3) as u8
    };
    let mut b = vec![0u8; HEADER_LEN + lanes as usize * LANE_BYTES];
    b[field::VERSION.start] = if src.below(64) == 0 { src.u8() } else { 2 };
    b[field::KIND.start] = kind;
    b[field::OP.start] = op;
    b[field::RANK.start] = rank as u8;
    b[field::JOB].copy_from_slice(&id.to_be_bytes());
    b[field::LANES].copy_from_slice(&lanes.to_be_bytes());
    b[field::EPOCH].copy_from_slice(&epoch.to_be_bytes());
    b[field::SLOT].copy_from_slice(&slot.to_be_bytes());
    b[field::SET.start] = set;
    if src.below(8) == 0 {
        b[field::COUNT.start] = src.u8();
        b[field::BITMAP].copy_from_slice(&src.u32().to_be_bytes());
    }
    if src.below(32) == 0 {
        b[field::FLAGS].copy_from_slice(&src.u16().to_be_bytes());
    }
    b[field::ROUND].copy_from_slice(&round.to_be_bytes());
    b[field::OFFSET].copy_from_slice(&src.u32().to_be_bytes());
    let (mut x, step) = (src.u32(), src.u32() | 1);
    for c in b[HEADER_LEN..].chunks_exact_mut(LANE_BYTES) {
        c.copy_from_slice(&x.to_be_bytes());
        x = x.wrapping_add(step);
    }
    match src.below(32) {
        0 => b.truncate(src.below(b.len() + 1)),
        1 => b.push(src.u8()),
        _ => {}
    }
    (from, b)
}

/// Σ of the counters exactly one of which every datagram increments.
fn accounted(c: &Counters) -> u64 {
    c.drops.iter().sum::<u64>()
        + c.jobs
            .iter()
            .map(|(_, j)| j.drops.iter().sum::<u64>() + j.data_in + j.probes + j.results_unicast)
            .sum::<u64>()
}

fn job_sum(c: &Counters, f: impl Fn(&JobCounters) -> u64) -> u64 {
    c.jobs.iter().map(|(_, j)| f(j)).sum()
}

impl Harness for SwitchHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        // Two 2-worker jobs; each worker of job 1 sends DATA for round 1, a retransmission,
        // then a PROBE; the same with job 2's rounds 1 and 2.
        let mut a = Vec::new();
        for (id, base) in [(1u8, 0u8), (2, 16)] {
            // lanes 32, 2 workers, epoch 0x01020305, slot_base, count 4
            a.extend_from_slice(&[2, 1, 1, 2, 3, 5, base, 3]);
            let _ = id;
        }
        let data = |job: u8, rank: u8, round_choice: u8| {
            // op: packet (≥ 3), id index, kind DATA, rank, epoch ok, from ok, slot in range,
            // set lookup, round choice, lanes = job's, op ADD, no count/bitmap, no flags,
            // offset, lane seed and step, no truncation.
            vec![
                3,
                job,
                0,
                1,
                rank,
                1,
                1,
                1,
                0,
                0,
                round_choice,
                0,
                2,
                0,
                1,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                7,
                0,
                0,
                0,
                3,
                2,
            ]
        };
        for (job, round) in [(0u8, 3u8), (1, 3)] {
            a.extend(data(job, 0, round));
            a.extend(data(job, 1, 0));
            a.extend(data(job, 0, 0));
        }
        let mut b = a.clone();
        b.extend(data(0, 0, 3));
        b.extend([3, 0, 9, 0, 1, 1, 1, 1, 0, 0, 0]);
        vec![a, b]
    }

    fn max_len(&self) -> usize {
        2048
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let mut src = Source::new(input);
        let mut core = SwitchCore::try_new_shard(POOL, 0, 1, MAXL as u16).expect("small pool");
        let mut m = Model::new();
        let mut outcome = 0u64;
        let create = |core: &mut SwitchCore, m: &mut Model, spec: JobSpec, outcome: &mut u64| {
            let want = m.create(&spec);
            let got = core.create(spec.clone());
            assert_eq!(got.is_ok(), want, "create {spec:?}: {got:?}");
            *outcome |= 1 << (40 + want as u32);
        };
        for id in [1, 2] {
            let spec = read_spec(&mut src, id);
            create(&mut core, &mut m, spec, &mut outcome);
        }
        while !src.is_empty() {
            match src.below(24) {
                0 => {
                    let id = 1 + src.below(4) as u16;
                    let spec = read_spec(&mut src, id);
                    create(&mut core, &mut m, spec, &mut outcome);
                }
                1 => {
                    let id = 1 + src.below(4) as u16;
                    let want = m.jobs.remove(&id).is_some();
                    assert_eq!(core.unregister(id).is_ok(), want, "unregister {id}");
                    outcome |= 1 << 42;
                }
                2 => {
                    let n = src.below(48);
                    let raw = src.bytes(n).to_vec();
                    self.step(&mut core, &mut m, addr(1, 0), &raw, &mut outcome);
                }
                _ => {
                    let (from, b) = read_packet(&mut src, &m);
                    self.step(&mut core, &mut m, from, &b, &mut outcome);
                }
            }
        }
        outcome
    }
}

impl SwitchHarness {
    /// One datagram through the core and the model, with every check.
    fn step(
        &self,
        core: &mut SwitchCore,
        m: &mut Model,
        from: SocketAddr,
        b: &[u8],
        outcome: &mut u64,
    ) {
        let (c0, r0) = (core.counters(), snapshot(core));
        let mut emitted: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        core.handle(from, b, &mut |to, d| emitted.push((to, d.to_vec())));
        let (c1, r1) = (core.counters(), snapshot(core));
        // Counters add up.
        assert_eq!(c1.packets_in, c0.packets_in + 1, "packets_in");
        assert_eq!(
            c1.packets_out - c0.packets_out,
            emitted.len() as u64,
            "packets_out counts every emitted datagram"
        );
        assert_eq!(
            accounted(&c1),
            accounted(&c0) + 1,
            "one outcome per datagram"
        );
        let completions = job_sum(&c1, |j| j.completions) - job_sum(&c0, |j| j.completions);
        let multicast =
            job_sum(&c1, |j| j.results_multicast) - job_sum(&c0, |j| j.results_multicast);
        let workers = c1
            .jobs
            .iter()
            .zip(&c0.jobs)
            .find(|((_, a), (_, b))| a.completions != b.completions)
            .and_then(|((id, _), _)| core.job(*id))
            .map_or(0, |j| j.workers.len() as u64);
        assert_eq!(multicast, completions * workers, "results_multicast");
        // Registers: untouched unless accepted, and then only the packet's own slot set, in
        // its own job's range.
        let accepted = c1
            .jobs
            .iter()
            .zip(&c0.jobs)
            .find(|((_, a), (_, b))| a.data_in != b.data_in)
            .map(|((id, _), _)| *id);
        let changed: Vec<usize> = (0..r0.len()).filter(|&i| r0[i] != r1[i]).collect();
        match accepted {
            None => assert!(
                changed.is_empty(),
                "registers {changed:?} changed by a dropped packet"
            ),
            Some(id) => {
                let slot = be32(b, field::SLOT.start) as usize;
                let ix = 2 * slot + b[field::SET.start] as usize;
                assert!(
                    changed.iter().all(|&i| i == ix),
                    "changed {changed:?}, packet at {ix}"
                );
                let j = core.job(id).expect("accepting job");
                assert!(
                    (j.slot_base as usize..(j.slot_base + j.slot_count) as usize).contains(&slot),
                    "job {id} accepted a packet for slot {slot} outside its range"
                );
            }
        }
        // The model.
        let want = m.packet(from, b);
        assert_eq!(emitted, want, "emitted datagrams");
        assert_eq!(c1, m.counters(), "counters");
        assert!(r1 == m.regs, "registers differ from the model");
        for (i, (a, b)) in c1.drops.iter().zip(&c0.drops).enumerate() {
            if a != b {
                *outcome |= 1 << i;
            }
        }
        for ((_, a), (_, b)) in c1.jobs.iter().zip(&c0.jobs) {
            for r in 0..DropReason::COUNT {
                if a.drops[r] != b.drops[r] {
                    *outcome |= 1 << (10 + r);
                }
            }
            *outcome |= ((a.completions != b.completions) as u64) << 20
                | ((a.results_unicast != b.results_unicast) as u64) << 21
                | ((a.probes != b.probes) as u64) << 22;
        }
    }
}
