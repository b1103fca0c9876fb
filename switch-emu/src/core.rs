//! The sans-I/O switch: slot registers, job table and counters, exactly as `docs/wire.md`
//! ("Processing a packet") describes; the same state machine the P4 program implements.
//!
//! [`SwitchCore`] never touches a socket: [`SwitchCore::handle`] takes one datagram and calls
//! `emit` once per outgoing datagram. All registers are allocated at construction; the data
//! path performs no allocation, no float arithmetic and no decoding of lane contents.

use std::net::SocketAddr;

use sketchreduce_wire::packet::{field, round_cmp, HEADER_LEN, LANE_BYTES};
use sketchreduce_wire::{
    Counters, DropReason, JobCounters, JobSpec, Kind, Op, Packet, LANE_CHOICES,
};
use thiserror::Error;

/// Most lanes a packet can carry: the register width per slot set.
pub const MAX_LANES: usize = LANE_CHOICES[LANE_CHOICES.len() - 1] as usize;
/// Largest datagram the switch handles or emits.
pub const MAX_PACKET: usize = HEADER_LEN + MAX_LANES * LANE_BYTES;

/// Why a job registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegisterError {
    /// The spec violates a limit (workers, lanes, slot range vs. pool size).
    #[error("invalid job: {0}")]
    Invalid(String),
    /// A different spec is registered under the same id.
    #[error("job {0} is already registered with a different spec")]
    Conflict(u16),
    /// The slot range overlaps another job's.
    #[error("job {job}: slots {base}..{end} overlap job {other}")]
    Overlap {
        /// The job being registered.
        job: u16,
        /// Its first slot.
        base: u32,
        /// One past its last slot.
        end: u64,
        /// The job it collides with.
        other: u16,
    },
    /// No such job (unregister).
    #[error("no job {0}")]
    UnknownJob(u16),
}

/// Whether a registration created a job or found an identical one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new job; its slot registers were reset.
    New,
    /// The identical spec was already registered: nothing changed (state and counters kept).
    Existing,
}

#[derive(Debug)]
struct Job {
    spec: JobSpec,
    workers: u8,
    full: u32,
    counters: JobCounters,
}

/// Per-shard statistics not in [`Counters`] (useful for benches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Datagrams received.
    pub packets_in: u64,
    /// Datagrams emitted.
    pub packets_out: u64,
}

/// The switch's state for a pool of slots, or for one shard of it (the slots `s` with
/// `s % shards == shard`, stored densely at index `s / shards`).
pub struct SwitchCore {
    pool_slots: u32,
    shard: u32,
    shards: u32,
    /// Lanes of every (local slot, set): index `(2·local + set)·MAX_LANES + i`.
    lanes: Vec<u32>,
    bitmap: Vec<u32>,
    count: Vec<u8>,
    round: Vec<u32>,
    /// Job id → index into `jobs` + 1 (0: no job).
    job_index: Vec<u16>,
    jobs: Vec<Job>,
    packets_in: u64,
    packets_out: u64,
    drops: [u64; 9],
    out: Box<[u8; MAX_PACKET]>,
}

impl std::fmt::Debug for SwitchCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchCore")
            .field("pool_slots", &self.pool_slots)
            .field("shard", &self.shard)
            .field("shards", &self.shards)
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

impl SwitchCore {
    /// A switch owning the whole pool of `pool_slots` slots.
    pub fn new(pool_slots: u32) -> Self {
        Self::new_shard(pool_slots, 0, 1)
    }

    /// Shard `shard` of `shards` of a pool of `pool_slots` slots: it holds registers for the
    /// slots `s` with `s % shards == shard` only; other slots are dropped as `bad_slot`.
    ///
    /// # Panics
    /// If `shards == 0` or `shard >= shards`.
    pub fn new_shard(pool_slots: u32, shard: u32, shards: u32) -> Self {
        assert!(shards > 0 && shard < shards, "shard {shard} of {shards}");
        let local = if pool_slots > shard {
            (pool_slots - shard).div_ceil(shards) as usize
        } else {
            0
        };
        SwitchCore {
            pool_slots,
            shard,
            shards,
            lanes: vec![0; local * 2 * MAX_LANES],
            bitmap: vec![0; local * 2],
            count: vec![0; local * 2],
            round: vec![0; local * 2],
            job_index: vec![0; 1 << 16],
            jobs: Vec::new(),
            packets_in: 0,
            packets_out: 0,
            drops: [0; 9],
            out: Box::new([0; MAX_PACKET]),
        }
    }

    /// Slots in the whole pool.
    pub fn pool_slots(&self) -> u32 {
        self.pool_slots
    }

    /// The registered jobs.
    pub fn jobs(&self) -> impl Iterator<Item = &JobSpec> {
        self.jobs.iter().map(|j| &j.spec)
    }

    /// The spec registered under `id`.
    pub fn job(&self, id: u16) -> Option<&JobSpec> {
        match self.job_index[id as usize] {
            0 => None,
            i => Some(&self.jobs[i as usize - 1].spec),
        }
    }

    /// Checks whether `spec` could be registered, without changing anything.
    pub fn check_register(&self, spec: &JobSpec) -> Result<Registered, RegisterError> {
        spec.validate(self.pool_slots)
            .map_err(|e| RegisterError::Invalid(e.to_string()))?;
        if let Some(existing) = self.job(spec.id) {
            return if existing == spec {
                Ok(Registered::Existing)
            } else {
                Err(RegisterError::Conflict(spec.id))
            };
        }
        if let Some(other) = self.jobs.iter().find(|j| j.spec.overlaps(spec)) {
            return Err(RegisterError::Overlap {
                job: spec.id,
                base: spec.slot_base,
                end: spec.slot_base as u64 + spec.slot_count as u64,
                other: other.spec.id,
            });
        }
        Ok(Registered::New)
    }

    /// Registers a job: validates it, refuses a different spec under the same id or an
    /// overlapping slot range, accepts an identical spec again (a no-op), and for a new job
    /// resets the `bitmap`, `count` and `round` registers of its slots (docs/wire.md).
    pub fn register(&mut self, spec: JobSpec) -> Result<Registered, RegisterError> {
        let r = self.check_register(&spec)?;
        if r == Registered::Existing {
            return Ok(r);
        }
        for s in spec.slot_base..spec.slot_base + spec.slot_count {
            if let Some(l) = self.local(s) {
                for set in 0..2 {
                    let ix = 2 * l + set;
                    self.bitmap[ix] = 0;
                    self.count[ix] = 0;
                    self.round[ix] = 0;
                }
            }
        }
        let job = Job {
            workers: spec.workers.len() as u8,
            full: spec.full_bitmap(),
            counters: JobCounters::default(),
            spec,
        };
        self.jobs.push(job);
        self.job_index[self.jobs[self.jobs.len() - 1].spec.id as usize] = self.jobs.len() as u16;
        Ok(Registered::New)
    }

    /// Removes a job (its slots become free; its counters are discarded).
    pub fn unregister(&mut self, id: u16) -> Result<JobSpec, RegisterError> {
        let i = match self.job_index[id as usize] {
            0 => return Err(RegisterError::UnknownJob(id)),
            i => i as usize - 1,
        };
        let job = self.jobs.swap_remove(i);
        self.job_index[id as usize] = 0;
        if i < self.jobs.len() {
            self.job_index[self.jobs[i].spec.id as usize] = i as u16 + 1;
        }
        Ok(job.spec)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        let mut jobs: Vec<(u16, JobCounters)> =
            self.jobs.iter().map(|j| (j.spec.id, j.counters)).collect();
        jobs.sort_by_key(|(id, _)| *id);
        Counters {
            packets_in: self.packets_in,
            packets_out: self.packets_out,
            drops: self.drops,
            jobs,
        }
    }

    /// Packets in and out so far (cheaper than [`SwitchCore::counters`]).
    pub fn stats(&self) -> CoreStats {
        CoreStats {
            packets_in: self.packets_in,
            packets_out: self.packets_out,
        }
    }

    /// Read-only view of a slot set's registers: `(round, count, bitmap, lanes)`, or `None`
    /// if the slot is not in this shard.
    pub fn slot_set(&self, slot: u32, set: u8) -> Option<(u32, u8, u32, &[u32])> {
        let l = self.local(slot)?;
        let ix = 2 * l + (set as usize & 1);
        Some((
            self.round[ix],
            self.count[ix],
            self.bitmap[ix],
            &self.lanes[ix * MAX_LANES..(ix + 1) * MAX_LANES],
        ))
    }

    #[inline]
    fn local(&self, slot: u32) -> Option<usize> {
        if slot >= self.pool_slots || slot % self.shards != self.shard {
            return None;
        }
        Some((slot / self.shards) as usize)
    }

    #[inline]
    fn drop_global(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Processes one datagram from `from`, calling `emit(destination, datagram)` once per
    /// outgoing datagram (once per worker for a multicast). No allocation.
    pub fn handle(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        emit: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        self.packets_in += 1;
        let Ok(pkt) = Packet::new_checked(datagram) else {
            self.drop_global(DropReason::Malformed);
            return;
        };
        let h = pkt.header();
        let ji = match self.job_index[h.job as usize] {
            0 => {
                self.drop_global(DropReason::UnknownJob);
                return;
            }
            i => i as usize - 1,
        };
        let (workers, full, lanes, slot_base, slot_count, token) = {
            let j = &self.jobs[ji];
            (
                j.workers,
                j.full,
                j.spec.lanes,
                j.spec.slot_base,
                j.spec.slot_count,
                j.spec.token,
            )
        };
        let reason = if h.token != token {
            Some(DropReason::BadToken)
        } else if h.rank >= workers {
            Some(DropReason::BadRank)
        } else if h.slot.wrapping_sub(slot_base) >= slot_count {
            Some(DropReason::BadSlot)
        } else if matches!(h.kind, Kind::Result | Kind::Status) {
            Some(DropReason::BadKind)
        } else if h.kind == Kind::Data && h.lanes != lanes {
            Some(DropReason::BadLanes)
        } else {
            None
        };
        if let Some(r) = reason {
            self.jobs[ji].counters.drops[r as usize] += 1;
            return;
        }
        let Some(local) = self.local(h.slot) else {
            // A slot of the job that another shard owns: the I/O layer routes by slot, so
            // this only happens with a shard driven directly.
            self.jobs[ji].counters.drops[DropReason::BadSlot as usize] += 1;
            return;
        };
        let ix = 2 * local + h.set as usize;
        let (rr, bb, cc) = (self.round[ix], self.bitmap[ix], self.count[ix]);

        if h.kind == Kind::Probe {
            self.jobs[ji].counters.probes += 1;
            let out = &mut self.out[..HEADER_LEN];
            out.copy_from_slice(&datagram[..HEADER_LEN]);
            out[field::KIND.start] = Kind::Status as u8;
            out[field::COUNT.start] = cc;
            out[field::FLAGS].fill(0);
            out[field::ROUND].copy_from_slice(&rr.to_be_bytes());
            out[field::BITMAP].copy_from_slice(&bb.to_be_bytes());
            self.packets_out += 1;
            emit(from, out);
            return;
        }

        // DATA.
        let bit = 1u32 << h.rank;
        let lane_bytes = pkt.lane_bytes();
        let regs = &mut self.lanes[ix * MAX_LANES..ix * MAX_LANES + lanes as usize];
        match round_cmp(h.round, rr) {
            core::cmp::Ordering::Less => {
                self.jobs[ji].counters.drops[DropReason::Stale as usize] += 1;
                return;
            }
            core::cmp::Ordering::Greater => {
                load(regs, lane_bytes);
                self.bitmap[ix] = bit;
                self.count[ix] = 1;
                self.round[ix] = h.round;
            }
            core::cmp::Ordering::Equal => {
                if bb & bit != 0 {
                    if cc == workers {
                        // The sender lost its RESULT: unicast the stored one.
                        let len = self.write_result(datagram, ix, lanes as usize, workers, full);
                        self.jobs[ji].counters.results_unicast += 1;
                        self.packets_out += 1;
                        emit(from, &self.out[..len]);
                    } else {
                        self.jobs[ji].counters.drops[DropReason::Duplicate as usize] += 1;
                    }
                    return;
                }
                if cc >= workers {
                    self.jobs[ji].counters.drops[DropReason::Stale as usize] += 1;
                    return;
                }
                if cc == 0 {
                    load(regs, lane_bytes);
                } else {
                    combine(h.op, regs, lane_bytes);
                }
                self.bitmap[ix] = bb | bit;
                self.count[ix] = cc + 1;
            }
        }
        self.jobs[ji].counters.data_in += 1;
        if self.count[ix] == workers {
            let len = self.write_result(datagram, ix, lanes as usize, workers, full);
            let job = &mut self.jobs[ji];
            job.counters.completions += 1;
            job.counters.results_multicast += workers as u64;
            self.packets_out += workers as u64;
            let out = &self.out[..len];
            for w in &job.spec.workers {
                emit(w.addr, out);
            }
        }
    }

    /// Writes into `self.out` a RESULT: the header of `request` with kind RESULT, count and
    /// bitmap of a complete set, flags 0, and the stored lanes of register set `ix`.
    fn write_result(&mut self, request: &[u8], ix: usize, lanes: usize, n: u8, full: u32) -> usize {
        let len = HEADER_LEN + lanes * LANE_BYTES;
        let out = &mut self.out[..len];
        out[..HEADER_LEN].copy_from_slice(&request[..HEADER_LEN]);
        out[field::KIND.start] = Kind::Result as u8;
        out[field::COUNT.start] = n;
        out[field::FLAGS].fill(0);
        out[field::BITMAP].copy_from_slice(&full.to_be_bytes());
        let regs = &self.lanes[ix * MAX_LANES..ix * MAX_LANES + lanes];
        for (c, v) in out[HEADER_LEN..].chunks_exact_mut(LANE_BYTES).zip(regs) {
            c.copy_from_slice(&v.to_be_bytes());
        }
        len
    }
}

#[inline]
fn be(c: &[u8]) -> u32 {
    u32::from_be_bytes([c[0], c[1], c[2], c[3]])
}

#[inline]
fn load(regs: &mut [u32], bytes: &[u8]) {
    for (r, c) in regs.iter_mut().zip(bytes.chunks_exact(LANE_BYTES)) {
        *r = be(c);
    }
}

#[inline]
fn combine(op: Op, regs: &mut [u32], bytes: &[u8]) {
    // One loop per op so each vectorises.
    let it = regs.iter_mut().zip(bytes.chunks_exact(LANE_BYTES));
    match op {
        Op::Add => it.for_each(|(r, c)| *r = r.wrapping_add(be(c))),
        Op::Or => it.for_each(|(r, c)| *r |= be(c)),
        Op::Max => it.for_each(|(r, c)| *r = (*r).max(be(c))),
    }
}

/// Adds `src`'s counters into `dst` (for merging shards).
pub fn merge_counters(dst: &mut Counters, src: &Counters) {
    dst.packets_in += src.packets_in;
    dst.packets_out += src.packets_out;
    for (d, s) in dst.drops.iter_mut().zip(src.drops) {
        *d += s;
    }
    for (id, c) in &src.jobs {
        match dst.jobs.iter_mut().find(|(i, _)| i == id) {
            Some((_, d)) => {
                d.data_in += c.data_in;
                d.completions += c.completions;
                d.results_multicast += c.results_multicast;
                d.results_unicast += c.results_unicast;
                d.probes += c.probes;
                for (x, y) in d.drops.iter_mut().zip(c.drops) {
                    *x += y;
                }
            }
            None => dst.jobs.push((*id, *c)),
        }
    }
    dst.jobs.sort_by_key(|(id, _)| *id);
}

/// Total drops by reason: global plus every job's.
pub fn total_drops(c: &Counters) -> [u64; 9] {
    let mut d = c.drops;
    for (_, j) in &c.jobs {
        for (x, y) in d.iter_mut().zip(j.drops) {
            *x += y;
        }
    }
    d
}

/// A pool split into shards by `slot % shards` (one per data thread), each behind a mutex;
/// job registrations apply to every shard. The sans-I/O entry point for a multi-threaded
/// switch: [`ShardedCore::handle`] routes a datagram to its slot's shard.
#[derive(Debug)]
pub struct ShardedCore {
    shards: Vec<std::sync::Mutex<SwitchCore>>,
    pool_slots: u32,
    /// Serialises registrations so that every shard sees the same sequence.
    registry: std::sync::Mutex<()>,
}

impl ShardedCore {
    /// `shards` shards (≥ 1) of a pool of `pool_slots` slots.
    pub fn new(pool_slots: u32, shards: u32) -> Self {
        let shards = shards.max(1);
        ShardedCore {
            shards: (0..shards)
                .map(|s| std::sync::Mutex::new(SwitchCore::new_shard(pool_slots, s, shards)))
                .collect(),
            pool_slots,
            registry: std::sync::Mutex::new(()),
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Slots in the pool.
    pub fn pool_slots(&self) -> u32 {
        self.pool_slots
    }

    /// Locks shard `i`.
    pub fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, SwitchCore> {
        lock(&self.shards[i])
    }

    /// The shard a datagram belongs to (by its slot field; 0 when too short to have one).
    #[inline]
    pub fn shard_of(&self, datagram: &[u8]) -> usize {
        if datagram.len() < HEADER_LEN {
            return 0;
        }
        let s = &datagram[field::SLOT];
        (u32::from_be_bytes([s[0], s[1], s[2], s[3]]) % self.shards.len() as u32) as usize
    }

    /// Routes one datagram to its shard and processes it there.
    pub fn handle(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        emit: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        self.shard(self.shard_of(datagram))
            .handle(from, datagram, emit)
    }

    /// Registers a job in every shard (all or nothing).
    pub fn register(&self, spec: JobSpec) -> Result<Registered, RegisterError> {
        let _g = lock(&self.registry);
        let r = self.shard(0).check_register(&spec)?;
        if r == Registered::New {
            for s in &self.shards {
                lock(s).register(spec.clone())?;
            }
        }
        Ok(r)
    }

    /// Unregisters a job from every shard.
    pub fn unregister(&self, id: u16) -> Result<JobSpec, RegisterError> {
        let _g = lock(&self.registry);
        let mut spec = Err(RegisterError::UnknownJob(id));
        for s in &self.shards {
            spec = lock(s).unregister(id);
        }
        spec
    }

    /// The registered job specs.
    pub fn jobs(&self) -> Vec<JobSpec> {
        self.shard(0).jobs().cloned().collect()
    }

    /// Counters summed over the shards.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for s in &self.shards {
            let c = lock(s).counters();
            merge_counters(&mut total, &c);
        }
        total
    }
}

/// Locks a mutex, ignoring poisoning (the core has no invariants a panic could break halfway
/// that matter more than keeping the switch up).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
