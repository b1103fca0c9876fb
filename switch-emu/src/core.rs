//! The sans-I/O switch: slot registers, job table and counters, exactly as `docs/wire.md`
//! ("Processing a packet") describes; the same state machine the P4 program implements.
//!
//! [`SwitchCore`] never touches a socket or a clock: [`SwitchCore::handle`] takes one datagram
//! and its source address and calls `emit` once per outgoing datagram; the I/O layer reports
//! datagrams whose IPv4 header carried options with [`SwitchCore::drop_ip_options`]. All
//! registers are allocated at construction; the data path performs no allocation, no float
//! arithmetic and no decoding of lane contents.

use std::net::SocketAddr;

use sketchreduce_wire::packet::{field, round_cmp, HEADER_LEN, LANE_BYTES};
use sketchreduce_wire::packet::{NACK_BAD_EPOCH, NACK_UNKNOWN_JOB};
use sketchreduce_wire::{
    Counters, DropReason, Header, JobCounters, JobSpec, Kind, Op, Packet, LANE_CHOICES,
};
use thiserror::Error;

/// Most lanes a packet can carry on any switch (the largest of `LANE_CHOICES`).
pub const MAX_LANES: usize = sketchreduce_wire::MAX_LANES as usize;
/// Largest datagram the switch handles or emits.
pub const MAX_PACKET: usize = HEADER_LEN + MAX_LANES * LANE_BYTES;
/// Most bytes of lane registers a switch allocates (`slots × 2 sets × max_lanes × 4`).
pub const MAX_REGISTER_BYTES: u64 = 1 << 30;

/// Bytes of lane registers for a pool of `slots` slots of `max_lanes` lanes.
pub fn register_bytes(slots: u32, max_lanes: u16) -> u64 {
    slots as u64 * 2 * max_lanes as u64 * LANE_BYTES as u64
}

/// Why a switch core cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// The lane registers would exceed [`MAX_REGISTER_BYTES`].
    #[error("{slots} slots of {max_lanes} lanes need {bytes} bytes of registers; the limit is {MAX_REGISTER_BYTES} (1 GiB): use fewer --slots or a smaller --max-lanes")]
    TooLarge {
        /// Slots asked for.
        slots: u32,
        /// Lanes per slot set.
        max_lanes: u16,
        /// Bytes that would take.
        bytes: u64,
    },
    /// `max_lanes` is not one of the lane choices.
    #[error("max lanes {0} is not one of {LANE_CHOICES:?}")]
    MaxLanes(u16),
    /// A pool without slots.
    #[error("the pool needs at least one slot")]
    NoSlots,
}

/// Why a job was refused or not found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegisterError {
    /// The spec violates a limit (workers, lanes, slot range, addresses, epoch 0).
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The slot range overlaps another job's.
    #[error("job {job}: slots {base}..{end} overlap job {other}")]
    Overlap {
        /// The job being created.
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

#[derive(Debug)]
struct Job {
    spec: JobSpec,
    workers: u8,
    full: u32,
    counters: JobCounters,
}

/// Per-shard statistics (cheaper to read than [`Counters`]; for benches).
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
    /// Lanes per register set (the switch's `max_lanes` capability).
    max_lanes: usize,
    /// Lanes of every (local slot, set): index `(2·local + set)·max_lanes + i`.
    lanes: Vec<u32>,
    bitmap: Vec<u32>,
    count: Vec<u8>,
    round: Vec<u32>,
    /// Job id → index into `jobs` + 1 (0: no job).
    job_index: Vec<u16>,
    jobs: Vec<Job>,
    packets_in: u64,
    packets_out: u64,
    drops: [u64; DropReason::COUNT],
    out: Box<[u8; MAX_PACKET]>,
}

impl std::fmt::Debug for SwitchCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchCore")
            .field("pool_slots", &self.pool_slots)
            .field("shard", &self.shard)
            .field("shards", &self.shards)
            .field("max_lanes", &self.max_lanes)
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

impl SwitchCore {
    /// A switch owning the whole pool of `pool_slots` slots, with registers for the largest
    /// lane count.
    ///
    /// # Panics
    /// If the registers would exceed [`MAX_REGISTER_BYTES`] or `pool_slots` is 0 (use
    /// [`SwitchCore::try_new_shard`] for sizes that come from users).
    pub fn new(pool_slots: u32) -> Self {
        match Self::try_new_shard(pool_slots, 0, 1, MAX_LANES as u16) {
            Ok(c) => c,
            Err(e) => panic!("SwitchCore::new({pool_slots}): {e}"),
        }
    }

    /// Shard `shard` of `shards` of a pool of `pool_slots` slots with `max_lanes` lanes per
    /// register set: it holds registers for the slots `s` with `s % shards == shard` only;
    /// other slots are dropped as `bad_slot`.
    ///
    /// # Panics
    /// If `shards == 0` or `shard >= shards` (a programming error, not input).
    pub fn try_new_shard(
        pool_slots: u32,
        shard: u32,
        shards: u32,
        max_lanes: u16,
    ) -> Result<Self, CoreError> {
        assert!(shards > 0 && shard < shards, "shard {shard} of {shards}");
        check_size(pool_slots, max_lanes)?;
        let local = if pool_slots > shard {
            (pool_slots - shard).div_ceil(shards) as usize
        } else {
            0
        };
        let max_lanes = max_lanes as usize;
        Ok(SwitchCore {
            pool_slots,
            shard,
            shards,
            max_lanes,
            lanes: vec![0; local * 2 * max_lanes],
            bitmap: vec![0; local * 2],
            count: vec![0; local * 2],
            round: vec![0; local * 2],
            job_index: vec![0; 1 << 16],
            jobs: Vec::new(),
            packets_in: 0,
            packets_out: 0,
            drops: [0; DropReason::COUNT],
            out: Box::new([0; MAX_PACKET]),
        })
    }

    /// Slots in the whole pool.
    pub fn pool_slots(&self) -> u32 {
        self.pool_slots
    }

    /// Lanes per register set: the largest lane count a job may use.
    pub fn max_lanes(&self) -> u16 {
        self.max_lanes as u16
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

    /// Checks whether `spec` could be created (replacing a job with the same id), without
    /// changing anything.
    pub fn check_create(&self, spec: &JobSpec) -> Result<(), RegisterError> {
        spec.validate(self.pool_slots, self.max_lanes as u16)
            .and_then(|()| spec.check_epoch())
            .map_err(|e| RegisterError::Invalid(e.to_string()))?;
        if let Some(other) = self
            .jobs
            .iter()
            .find(|j| j.spec.id != spec.id && j.spec.overlaps(spec))
        {
            return Err(RegisterError::Overlap {
                job: spec.id,
                base: spec.slot_base,
                end: spec.slot_base as u64 + spec.slot_count as u64,
                other: other.spec.id,
            });
        }
        Ok(())
    }

    /// Creates a job under its (nonzero) epoch, replacing a job with the same id: validates
    /// it, refuses a slot range overlapping another job's, resets the `bitmap`, `count` and
    /// `round` registers of its slots and starts its counters at 0 (docs/wire.md). Packets of
    /// a replaced job's epoch are dropped as `bad_epoch` from now on.
    pub fn create(&mut self, spec: JobSpec) -> Result<(), RegisterError> {
        self.check_create(&spec)?;
        if self.job(spec.id).is_some() {
            self.unregister(spec.id)?;
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
        let id = job.spec.id;
        self.jobs.push(job);
        self.job_index[id as usize] = self.jobs.len() as u16;
        Ok(())
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

    /// Read-only view of a slot set's registers: `(round, count, bitmap, lanes)` (all
    /// `max_lanes` lane registers), or `None` if the slot is not in this shard.
    pub fn slot_set(&self, slot: u32, set: u8) -> Option<(u32, u8, u32, &[u32])> {
        let l = self.local(slot)?;
        let ix = 2 * l + (set as usize & 1);
        let m = self.max_lanes;
        Some((
            self.round[ix],
            self.count[ix],
            self.bitmap[ix],
            &self.lanes[ix * m..(ix + 1) * m],
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

    /// Accounts a datagram whose IPv4 header carried options (IHL ≠ 5), which the I/O layer
    /// detected (the switch never sees the IP header itself): received and `malformed`.
    pub fn drop_ip_options(&mut self) {
        self.packets_in += 1;
        self.drop_global(DropReason::Malformed);
    }

    /// Answers a PROBE that names no job or another epoch: the probe's header with kind
    /// STATUS, count, bitmap and round 0, `flags = nack`, back to the probe's source (there is
    /// no registered address to use; same size as the probe, so no amplification).
    fn nack(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        nack: u16,
        emit: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        let out = &mut self.out[..HEADER_LEN];
        out.copy_from_slice(&datagram[..HEADER_LEN]);
        out[field::KIND.start] = Kind::Status as u8;
        out[field::COUNT.start] = 0;
        out[field::FLAGS].copy_from_slice(&nack.to_be_bytes());
        out[field::ROUND].fill(0);
        out[field::BITMAP].fill(0);
        self.packets_out += 1;
        emit(from, out);
    }

    /// Processes one datagram from `from` (its UDP source address, or the remote address of
    /// its QUIC connection), calling `emit(destination, datagram)` once per outgoing datagram
    /// (once per worker for a multicast). No allocation.
    pub fn handle(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        emit: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        self.packets_in += 1;
        // 1. malformed: length, version, kind, op, set, lanes vs kind, request flags and
        // request set = round & 1.
        let Ok(pkt) = Packet::new_checked(datagram) else {
            self.drop_global(DropReason::Malformed);
            return;
        };
        let Ok(h) = Header::parse(&pkt) else {
            self.drop_global(DropReason::Malformed);
            return;
        };
        // 2. unknown_job → bad_epoch → bad_rank → bad_source → bad_slot → bad_kind → bad_lanes.
        let ji = match self.job_index[h.job as usize] {
            0 => {
                self.drop_global(DropReason::UnknownJob);
                if h.kind == Kind::Probe {
                    self.nack(from, datagram, NACK_UNKNOWN_JOB, emit);
                }
                return;
            }
            i => i as usize - 1,
        };
        let job = &self.jobs[ji];
        let (workers, full, lanes) = (job.workers, job.full, job.spec.lanes);
        let reason = if h.epoch != job.spec.epoch {
            Some(DropReason::BadEpoch)
        } else if h.rank >= workers {
            Some(DropReason::BadRank)
        } else if job.spec.workers[h.rank as usize].addr != from {
            Some(DropReason::BadSource)
        } else if h.slot.wrapping_sub(job.spec.slot_base) >= job.spec.slot_count {
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
            if r == DropReason::BadEpoch && h.kind == Kind::Probe {
                self.nack(from, datagram, NACK_BAD_EPOCH, emit);
            }
            return;
        }
        let Some(local) = self.local(h.slot) else {
            // A slot of the job that another shard owns: the I/O layer routes by slot, so
            // this only happens with a shard driven directly.
            self.jobs[ji].counters.drops[DropReason::BadSlot as usize] += 1;
            return;
        };
        // From here on `from` is the rank's registered address (the source check passed):
        // replies go there.
        let ix = 2 * local + h.set as usize;
        let (rr, bb, cc) = (self.round[ix], self.bitmap[ix], self.count[ix]);

        // 3. PROBE → STATUS with the set's round, count and bitmap.
        if h.kind == Kind::Probe {
            self.jobs[ji].counters.probes += 1;
            let out = &mut self.out[..HEADER_LEN];
            out.copy_from_slice(&datagram[..HEADER_LEN]);
            out[field::KIND.start] = Kind::Status as u8;
            out[field::COUNT.start] = cc;
            out[field::ROUND].copy_from_slice(&rr.to_be_bytes());
            out[field::BITMAP].copy_from_slice(&bb.to_be_bytes());
            self.packets_out += 1;
            emit(from, out);
            return;
        }

        // 4. DATA: the slot state machine.
        let bit = 1u32 << h.rank;
        let lane_bytes = pkt.lane_bytes();
        let base = ix * self.max_lanes;
        let regs = &mut self.lanes[base..base + lanes as usize];
        match round_cmp(h.round, rr) {
            core::cmp::Ordering::Less => {
                self.jobs[ji].counters.drops[DropReason::Stale as usize] += 1;
                return;
            }
            core::cmp::Ordering::Greater => {
                // First contribution of a newer round: lanes = packet, bitmap = 1 << rank,
                // count = 1.
                load(regs, lane_bytes);
                self.bitmap[ix] = bit;
                self.count[ix] = 1;
                self.round[ix] = h.round;
            }
            core::cmp::Ordering::Equal => {
                if bb & bit != 0 {
                    if cc == workers {
                        // The sender lost its RESULT: unicast the stored one, with the
                        // retransmitted packet's header, to its registered address.
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
                    // First contribution of this round (fresh registers, round 0).
                    load(regs, lane_bytes);
                    self.bitmap[ix] = bit;
                    self.count[ix] = 1;
                } else {
                    combine(h.op, regs, lane_bytes);
                    self.bitmap[ix] = bb | bit;
                    self.count[ix] = cc + 1;
                }
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
        let base = ix * self.max_lanes;
        let regs = &self.lanes[base..base + lanes];
        for (c, v) in out[HEADER_LEN..].chunks_exact_mut(LANE_BYTES).zip(regs) {
            c.copy_from_slice(&v.to_be_bytes());
        }
        len
    }
}

fn check_size(slots: u32, max_lanes: u16) -> Result<(), CoreError> {
    if !LANE_CHOICES.contains(&max_lanes) {
        return Err(CoreError::MaxLanes(max_lanes));
    }
    if slots == 0 {
        return Err(CoreError::NoSlots);
    }
    let bytes = register_bytes(slots, max_lanes);
    if bytes > MAX_REGISTER_BYTES {
        return Err(CoreError::TooLarge {
            slots,
            max_lanes,
            bytes,
        });
    }
    Ok(())
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
pub fn total_drops(c: &Counters) -> [u64; DropReason::COUNT] {
    let mut d = c.drops;
    for (_, j) in &c.jobs {
        for (x, y) in d.iter_mut().zip(j.drops) {
            *x += y;
        }
    }
    d
}

/// A pool split into shards by `slot % shards` (one per data thread), each behind a mutex;
/// job changes apply to every shard. The sans-I/O entry point for a multi-threaded switch:
/// [`ShardedCore::handle`] routes a datagram to its slot's shard.
#[derive(Debug)]
pub struct ShardedCore {
    shards: Vec<std::sync::Mutex<SwitchCore>>,
    pool_slots: u32,
    max_lanes: u16,
    /// Serialises job changes so that every shard sees the same sequence.
    registry: std::sync::Mutex<()>,
}

impl ShardedCore {
    /// `shards` shards (≥ 1) of a pool of `pool_slots` slots with `max_lanes` lanes per
    /// register set (registers ≤ [`MAX_REGISTER_BYTES`] in total).
    pub fn new(pool_slots: u32, shards: u32, max_lanes: u16) -> Result<Self, CoreError> {
        let shards = shards.max(1);
        check_size(pool_slots, max_lanes)?;
        Ok(ShardedCore {
            shards: (0..shards)
                .map(|s| {
                    SwitchCore::try_new_shard(pool_slots, s, shards, max_lanes)
                        .map(std::sync::Mutex::new)
                })
                .collect::<Result<_, _>>()?,
            pool_slots,
            max_lanes,
            registry: std::sync::Mutex::new(()),
        })
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Slots in the pool.
    pub fn pool_slots(&self) -> u32 {
        self.pool_slots
    }

    /// Lanes per register set.
    pub fn max_lanes(&self) -> u16 {
        self.max_lanes
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

    /// Accounts a datagram that arrived with IPv4 options (see [`SwitchCore::drop_ip_options`]).
    pub fn drop_ip_options(&self, datagram: &[u8]) {
        self.shard(self.shard_of(datagram)).drop_ip_options()
    }

    /// Creates (or replaces) a job in every shard (all or nothing).
    pub fn create(&self, spec: JobSpec) -> Result<(), RegisterError> {
        let _g = lock(&self.registry);
        self.shard(0).check_create(&spec)?;
        for s in &self.shards {
            lock(s).create(spec.clone())?;
        }
        Ok(())
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

    /// The spec of job `id`.
    pub fn job(&self, id: u16) -> Option<JobSpec> {
        self.shard(0).job(id).cloned()
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
