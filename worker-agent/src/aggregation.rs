//! The sans-I/O aggregation state machine of one worker in one job.
//!
//! An [`Aggregation`] turns a list of word streams (each with its combining [`Op`]) into their
//! aggregates over all workers of the job, through the switch's slots, following the "Worker
//! rules" of `docs/wire.md`:
//!
//! - the streams are concatenated into one sequence of L-lane chunks (the last chunk of each
//!   stream is padded with zeros, the identity of ADD, OR and unsigned MAX);
//! - chunk `k` of an operation goes to slot `slot_base + k mod W` (W = the window); the
//!   per-slot round counter counts this worker's previous uses of the slot and lives as long
//!   as the `Aggregation` (one per job), so all workers keep agreeing on rounds across
//!   operations;
//! - chunk `k + W` is started only once chunk `k`'s RESULT arrived (the window is self-clocked
//!   by results, as in SwitchML);
//! - loss recovery avoids spurious retransmissions, which the switch would only drop as
//!   `duplicate` while a slower worker is still encoding or decoding:
//!   - **gap evidence** (as RACK/fast retransmit in TCP): results come back in chunk order, so
//!     when a chunk sent *after* this one's last transmission completes and this one is still
//!     open [`AggConfig::reorder_window`] later, its packet (or its RESULT) was lost: the
//!     identical DATA is resent at once;
//!   - **probe before resending** otherwise: when a chunk's retransmission timeout (RTO:
//!     smoothed RTT + 4·variance, Karn's rule, clamped to [`AggConfig::min_rto`],
//!     [`AggConfig::max_rto`]) expires without evidence, the worker PROBEs that slot instead
//!     of resending (every expired slot: a STATUS is slot-specific). A STATUS showing its bit
//!     means "waiting for other workers": no resend, and that slot's timer backs off (to at
//!     most four RTOs); a STATUS without its bit (or an
//!     older round) resends the DATA; a complete set (its RESULT was lost) resends the DATA,
//!     which the switch answers with the stored RESULT; no STATUS within another RTO resends
//!     DATA and PROBE;
//! - a chunk unanswered for [`AggConfig::probe_after`] is PROBEd alongside any resend; one
//!   unanswered for [`AggConfig::worker_timeout`] fails the operation with
//!   [`AgentError::SlotTimeout`], which names the job, the slot, the round and the ranks the
//!   switch's STATUS bitmap lacks (or says that no STATUS came back at all). Nothing ever
//!   waits without a deadline.
//!
//! Results are written in place over the stream's input words (a chunk's input is no longer
//! needed once its result is in), so an operation allocates nothing per packet.
//!
//! The I/O shell calls [`Aggregation::handle_datagram`] for every datagram received,
//! [`Aggregation::poll_transmit`] until it returns `None` after every event, and sleeps at most
//! until [`Aggregation::poll_timeout`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sketchreduce_wire::packet::{
    self, round_cmp, HEADER_LEN, LANE_BYTES, NACK_MASK, NACK_UNKNOWN_JOB,
};
use sketchreduce_wire::{Header, JobSpec, Kind, Op, Packet};

use crate::error::AgentError;

/// A slot whose STATUS says "waiting for other workers" backs off to at most this many RTOs.
const WAITING_BACKOFF: u32 = 4;

/// Timing and window parameters of an [`Aggregation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggConfig {
    /// Outstanding slots (W); clamped to the job's `slot_count`.
    pub window: u32,
    /// Retransmission timeout before any RTT sample.
    pub initial_rto: Duration,
    /// Lower bound of the adaptive RTO.
    pub min_rto: Duration,
    /// Upper bound of the RTO after backoff.
    pub max_rto: Duration,
    /// How long a chunk may stay unanswered after a chunk sent *later* completed before it is
    /// declared lost and retransmitted without probing first (results come back in chunk
    /// order up to the switch's thread interleaving; this absorbs that reordering).
    pub reorder_window: Duration,
    /// A chunk unanswered this long is also PROBEd, so that a failure can name missing ranks.
    pub probe_after: Duration,
    /// A chunk unanswered this long fails the operation.
    pub worker_timeout: Duration,
}

impl Default for AggConfig {
    fn default() -> Self {
        AggConfig::with_timeout(Duration::from_secs(10))
    }
}

impl AggConfig {
    /// Defaults suited to a LAN or loopback with the given worker timeout (probing starts at
    /// half of it).
    pub fn with_timeout(worker_timeout: Duration) -> Self {
        AggConfig {
            window: 128,
            initial_rto: Duration::from_millis(5),
            min_rto: Duration::from_millis(2),
            max_rto: Duration::from_millis(200),
            reorder_window: Duration::from_micros(500),
            probe_after: worker_timeout / 2,
            worker_timeout,
        }
    }
}

/// Counters of one [`Aggregation`] (cumulative over its operations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggStats {
    /// DATA packets sent, first transmissions and retransmissions.
    pub packets_sent: u64,
    /// Bytes of those packets (aggregation header + lanes, no UDP/IP headers).
    pub bytes_sent: u64,
    /// DATA packets sent again after a timeout.
    pub retransmissions: u64,
    /// PROBE packets sent.
    pub probes: u64,
    /// RESULTs received for chunks already completed (duplicates, e.g. a multicast plus a
    /// unicast answer to a retransmission).
    pub duplicates: u64,
    /// Datagrams ignored: malformed, another job, or not a RESULT/STATUS for a live slot.
    pub ignored: u64,
    /// RESULTs refused because they are not a complete aggregate (count ≠ workers or a
    /// bitmap other than all workers): forged or corrupted.
    pub rejected: u64,
    /// Chunks completed.
    pub chunks: u64,
    /// Operations completed.
    pub operations: u64,
}

/// One stream of an operation: the words to aggregate and the op that combines them. After
/// the operation the words hold the aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// How the switch combines this stream.
    pub op: Op,
    /// Input words; replaced by the aggregate in place.
    pub words: Vec<u32>,
}

impl Stream {
    /// A stream of `words` combined by `op`.
    pub fn new(op: Op, words: Vec<u32>) -> Self {
        Stream { op, words }
    }
}

/// What [`Aggregation::poll_transmit`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Bytes of the datagram written at the start of the buffer.
    pub len: usize,
    /// Absolute slot the datagram is for (the UDP shell sends it to
    /// `data_port + slot % data_ports`).
    pub slot: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Data,
    Probe,
}

#[derive(Debug, Clone, Copy)]
struct SlotState {
    busy: bool,
    chunk: u32,
    round: u32,
    first_sent: Option<Instant>,
    /// Last transmission of the DATA packet (gap evidence compares send times).
    last_sent: Option<Instant>,
    deadline: Option<Instant>,
    /// This slot's current RTO (backs off while the switch says "waiting for others").
    rto: Duration,
    sends: u32,
    queued_data: bool,
    queued_probe: bool,
    /// A PROBE is in flight since this instant (cleared by its STATUS or a DATA resend).
    probe_sent: Option<Instant>,
    /// PROBEs sent for this chunk (a STATUS is an RTT sample only after exactly one).
    probes: u32,
    /// A chunk sent after this one's last transmission has completed: this one is lost.
    evidence: bool,
    /// Latest STATUS for this slot in this round: (switch round, count, bitmap).
    status: Option<(u32, u8, u32)>,
}

impl SlotState {
    fn idle() -> Self {
        SlotState {
            busy: false,
            chunk: 0,
            round: 0,
            first_sent: None,
            last_sent: None,
            deadline: None,
            rto: Duration::ZERO,
            sends: 0,
            queued_data: false,
            queued_probe: false,
            probe_sent: None,
            probes: 0,
            evidence: false,
            status: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct StreamMeta {
    first_chunk: u32,
    chunks: u32,
}

/// Where an aggregation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AggState {
    /// No operation started, or the last one completed.
    Idle,
    /// An operation is in flight.
    Running,
    /// The last operation failed; the machine refuses further work (slot rounds may be out of
    /// step with the other workers).
    Failed(AgentError),
}

/// The per-job, per-worker aggregation state machine (see the module docs).
#[derive(Debug)]
pub struct Aggregation {
    job: u16,
    epoch: u32,
    rank: u8,
    lanes: usize,
    slot_base: u32,
    world: usize,
    full_bitmap: u32,
    cfg: AggConfig,
    window: usize,
    /// Per window slot: the round of its next use (this worker's uses so far).
    rounds: Vec<u32>,
    slots: Vec<SlotState>,
    queue: VecDeque<(u32, Pending)>,
    streams: Vec<Stream>,
    meta: Vec<StreamMeta>,
    total_chunks: u32,
    /// One past the furthest chunk started (see [`Aggregation::started_chunks`]).
    next_chunk: u32,
    done_chunks: u32,
    /// Ranks whose workers exited (see [`Aggregation::peer_gone`]); kept across operations.
    gone: u32,
    /// One bit per chunk of the operation: its RESULT arrived.
    done_bits: Vec<u64>,
    /// Every chunk below this one is complete.
    frontier: u32,
    running: bool,
    failed: Option<AgentError>,
    srtt: Option<(Duration, Duration)>,
    stats: AggStats,
    scratch: Vec<u32>,
}

impl Aggregation {
    /// A machine for worker `rank` of `job`. Fails if the rank is out of range or the job
    /// invalid.
    pub fn new(job: &JobSpec, rank: u8, cfg: AggConfig) -> Result<Self, AgentError> {
        if job.workers.is_empty() || job.workers.len() > sketchreduce_wire::MAX_WORKERS {
            return Err(AgentError::Config(format!(
                "job {} has {} workers; need 1..={}",
                job.id,
                job.workers.len(),
                sketchreduce_wire::MAX_WORKERS
            )));
        }
        if rank as usize >= job.workers.len() {
            return Err(AgentError::Config(format!(
                "rank {rank} out of range for job {} with {} workers",
                job.id,
                job.workers.len()
            )));
        }
        if !sketchreduce_wire::LANE_CHOICES.contains(&job.lanes) {
            return Err(AgentError::Config(format!(
                "job {}: {} lanes per packet is not one of {:?}",
                job.id,
                job.lanes,
                sketchreduce_wire::LANE_CHOICES
            )));
        }
        if job.slot_count == 0 {
            return Err(AgentError::Config(format!("job {} owns no slots", job.id)));
        }
        let window = cfg.window.clamp(1, job.slot_count) as usize;
        Ok(Aggregation {
            job: job.id,
            epoch: job.epoch,
            rank,
            lanes: job.lanes as usize,
            slot_base: job.slot_base,
            world: job.workers.len(),
            full_bitmap: job.full_bitmap(),
            cfg,
            window,
            rounds: vec![0; window],
            slots: vec![SlotState::idle(); window],
            queue: VecDeque::with_capacity(2 * window),
            streams: Vec::new(),
            meta: Vec::new(),
            total_chunks: 0,
            next_chunk: 0,
            done_chunks: 0,
            gone: 0,
            done_bits: Vec::new(),
            frontier: 0,
            running: false,
            failed: None,
            srtt: None,
            stats: AggStats::default(),
            scratch: vec![0; job.lanes as usize],
        })
    }

    /// Lanes per packet.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// The effective window W.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The job id.
    pub fn job(&self) -> u16 {
        self.job
    }

    /// This worker's rank.
    pub fn rank(&self) -> u8 {
        self.rank
    }

    /// Number of workers in the job.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Largest datagram this machine emits (a buffer of this size suffices for
    /// [`Aggregation::poll_transmit`]).
    pub fn max_datagram(&self) -> usize {
        HEADER_LEN + self.lanes * LANE_BYTES
    }

    /// Counters so far.
    pub fn stats(&self) -> AggStats {
        self.stats
    }

    /// Current state.
    pub fn state(&self) -> AggState {
        if let Some(e) = &self.failed {
            AggState::Failed(e.clone())
        } else if self.running {
            AggState::Running
        } else {
            AggState::Idle
        }
    }

    /// Whether the last operation finished (successfully or not).
    pub fn is_done(&self) -> bool {
        !self.running
    }

    /// The error that stopped the machine, if any.
    pub fn error(&self) -> Option<&AgentError> {
        self.failed.as_ref()
    }

    /// Starts an operation over `streams`. Every worker of the job must start the same
    /// sequence of operations with streams of the same lengths and ops.
    pub fn start(&mut self, streams: Vec<Stream>) -> Result<(), AgentError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.running {
            return Err(AgentError::Busy);
        }
        self.meta.clear();
        let mut total: u64 = 0;
        for s in &streams {
            let chunks = s.words.len().div_ceil(self.lanes) as u64;
            self.meta.push(StreamMeta {
                first_chunk: total as u32,
                chunks: chunks as u32,
            });
            total += chunks;
        }
        if total > u32::MAX as u64 / 2 {
            return Err(AgentError::Config(format!(
                "operation of {total} chunks is too large"
            )));
        }
        self.streams = streams;
        self.total_chunks = total as u32;
        self.next_chunk = 0;
        self.done_chunks = 0;
        self.done_bits.clear();
        self.done_bits
            .resize((self.total_chunks as usize).div_ceil(64), 0);
        self.frontier = 0;
        self.queue.clear();
        for s in &mut self.slots {
            *s = SlotState::idle();
        }
        self.running = self.total_chunks > 0;
        while (self.next_chunk as usize) < self.window && self.next_chunk < self.total_chunks {
            let k = self.next_chunk;
            self.begin_chunk(k);
        }
        Ok(())
    }

    /// Takes the streams (holding the aggregates once the operation completed).
    pub fn take_streams(&mut self) -> Vec<Stream> {
        std::mem::take(&mut self.streams)
    }

    /// Borrows the streams.
    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    /// The words of stream `i`, mutably: a caller that fills a stream lazily writes a chunk's
    /// words before that chunk is started (see [`Self::started_chunks`]); words of started
    /// chunks must not change (they may be on the wire, or already replaced by results).
    pub fn stream_words_mut(&mut self, i: usize) -> Option<&mut [u32]> {
        self.streams.get_mut(i).map(|s| &mut s.words[..])
    }

    /// One past the furthest chunk started so far (chunk `k` is started once chunk `k − W`
    /// completed; a started chunk is sent at the next [`Self::poll_transmit`]). Not a count:
    /// after a loss one slot can lag while the others run far ahead, so chunks below this
    /// may still be unstarted, but none at or above it is started.
    pub fn started_chunks(&self) -> u32 {
        self.next_chunk
    }

    fn begin_chunk(&mut self, k: u32) {
        let w = k as usize % self.window;
        let round = self.rounds[w];
        self.rounds[w] = round.wrapping_add(1);
        let rto = self.current_rto();
        self.slots[w] = SlotState {
            busy: true,
            chunk: k,
            round,
            rto,
            queued_data: true,
            ..SlotState::idle()
        };
        self.queue.push_back((w as u32, Pending::Data));
        // The furthest, not the latest: a lagging slot's chunk starts after later ones.
        self.next_chunk = self.next_chunk.max(k + 1);
    }

    fn current_rto(&self) -> Duration {
        match self.srtt {
            None => self.cfg.initial_rto,
            Some((srtt, rttvar)) => (srtt + 4 * rttvar).clamp(self.cfg.min_rto, self.cfg.max_rto),
        }
    }

    fn sample_rtt(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => (rtt, rtt / 2),
            Some((srtt, rttvar)) => {
                let err = srtt.abs_diff(rtt);
                (srtt * 7 / 8 + rtt / 8, rttvar * 3 / 4 + err / 4)
            }
        });
    }

    /// (stream index, chunk index within the stream) of operation chunk `k`.
    fn locate(&self, k: u32) -> (usize, usize) {
        let i = self
            .meta
            .partition_point(|m| m.first_chunk + m.chunks <= k)
            .min(self.meta.len() - 1);
        (i, (k - self.meta[i].first_chunk) as usize)
    }

    fn header(&self, w: usize, kind: Kind) -> Header {
        let st = &self.slots[w];
        let (si, _) = self.locate(st.chunk);
        let slot = self.slot_base + w as u32;
        Header {
            op: self.streams[si].op,
            lanes: if kind == Kind::Data {
                self.lanes as u16
            } else {
                0
            },
            offset: st.chunk,
            ..Header::request(kind, self.job, self.epoch, self.rank, slot, st.round)
        }
    }

    /// Handles a datagram from the switch. Anything that is not a RESULT or STATUS of this
    /// job for a live slot and round is counted and ignored.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        let Ok(p) = Packet::new_checked(datagram) else {
            self.stats.ignored += 1;
            return;
        };
        let Ok(h) = Header::parse(&p) else {
            self.stats.ignored += 1;
            return;
        };
        if h.check_reply().is_err() {
            self.stats.ignored += 1;
            return;
        }
        if h.kind == Kind::Status && h.flags & NACK_MASK != 0 {
            self.on_nack(&h);
            return;
        }
        if h.job != self.job
            || h.epoch != self.epoch
            || h.slot < self.slot_base
            || h.slot - self.slot_base >= self.window as u32
        {
            self.stats.ignored += 1;
            return;
        }
        let w = (h.slot - self.slot_base) as usize;
        match h.kind {
            Kind::Result => self.on_result(now, w, &h, &p),
            Kind::Status => self.on_status(now, w, &h),
            _ => self.stats.ignored += 1,
        }
    }

    /// A NACK STATUS answers one of our PROBEs: the switch does not know this job, or knows
    /// it under another epoch (its lease expired, someone re-created it, or the switch
    /// restarted). Nothing sent under this registration can complete: fail at once, saying
    /// so, rather than as "unreachable" after the worker timeout.
    fn on_nack(&mut self, h: &Header) {
        // Only a NACK for a probe of ours (same job, epoch and a live slot) counts; anything
        // else is noise an off-path sender could forge.
        let w = h.slot.wrapping_sub(self.slot_base) as usize;
        let ours = h.job == self.job
            && h.epoch == self.epoch
            && w < self.window
            && self.running
            && self.slots[w].busy
            && h.offset == self.slots[w].chunk;
        if !ours {
            self.stats.ignored += 1;
            return;
        }
        let why = if h.flags & NACK_UNKNOWN_JOB != 0 {
            "the switch has no such job (its lease expired, it was unregistered, or the switch restarted without it)"
        } else {
            "the switch holds this job under another epoch (it was re-created, e.g. by a restarted worker)"
        };
        self.fail(AgentError::NotRegistered {
            job: self.job,
            epoch: self.epoch,
            detail: why.to_string(),
        });
    }

    /// A STATUS answers one of our PROBEs: decide whether the DATA must be resent.
    fn on_status(&mut self, now: Instant, w: usize, h: &Header) {
        let st = self.slots[w];
        if !self.running || !st.busy || h.offset != st.chunk {
            self.stats.ignored += 1;
            return;
        }
        let bit = 1u32 << self.rank;
        let current = round_cmp(h.round, st.round) == core::cmp::Ordering::Equal;
        let have = if current { h.bitmap } else { 0 };
        let missing_gone = self.gone & !have & self.full_bitmap;
        if missing_gone != 0 && (!current || (h.count as usize) < self.world) {
            let rank = missing_gone.trailing_zeros() as u8;
            self.fail(AgentError::PeerGone {
                job: self.job,
                rank,
                detail: format!(
                    "slot {} round {} (chunk {}) holds {}/{} contributions (bitmap {:#x})",
                    h.slot,
                    st.round,
                    st.chunk,
                    if current { h.count } else { 0 },
                    self.world,
                    have
                ),
            });
            return;
        }
        // A PROBE's round trip is a clean RTT sample (it waits for nobody, unlike a chunk's
        // DATA → RESULT): it teaches the RTO a slow path even when every chunk gets probed
        // and so gives no sample of its own.
        // Karn's rule again: after a second PROBE, a STATUS may answer either.
        if let (Some(t), 1, None) = (st.probe_sent, st.probes, st.status) {
            self.sample_rtt(now.saturating_duration_since(t));
        }
        let cap = (self.current_rto() * WAITING_BACKOFF).min(self.cfg.max_rto);
        let s = &mut self.slots[w];
        s.status = Some((h.round, h.count, h.bitmap));
        s.probe_sent = None;
        let resend = match round_cmp(h.round, st.round) {
            // The set is still at an older round: nobody's packet of this round arrived.
            core::cmp::Ordering::Less => true,
            // Ahead of us: reported by the timeout diagnosis, nothing to resend.
            core::cmp::Ordering::Greater => false,
            // Complete: our RESULT was lost, a resend fetches the stored one. Our bit
            // missing: our DATA was lost.
            core::cmp::Ordering::Equal => h.count as usize >= self.world || h.bitmap & bit == 0,
        };
        if resend {
            if !s.queued_data {
                s.queued_data = true;
                self.queue.push_back((w as u32, Pending::Data));
            }
            return;
        }
        // Our contribution is in and the set waits for other workers: back off this timer
        // only (another slot may hold this worker's own lost DATA; its probe finds out), and
        // only to a few RTOs: once the others recover, this slot's RESULT may be the copy
        // that is lost, and at the end of an operation no later chunk reveals that.
        let backoff = (s.rto * 2).min(cap);
        s.rto = backoff;
        s.deadline = Some(now + backoff);
    }

    fn on_result(&mut self, now: Instant, w: usize, h: &Header, p: &Packet<&[u8]>) {
        let st = self.slots[w];
        if !self.running || self.failed.is_some() {
            self.stats.duplicates += 1;
            return;
        }
        if !st.busy {
            // Late or duplicated RESULT for a chunk this worker already completed.
            self.stats.duplicates += 1;
            return;
        }
        match round_cmp(h.round, st.round) {
            core::cmp::Ordering::Less => {
                self.stats.duplicates += 1;
                return;
            }
            core::cmp::Ordering::Greater => {
                // A round we have not sent: another worker is ahead of us on this slot, which
                // the worker rules make impossible unless the workers' operation sequences
                // differ.
                self.fail(AgentError::Desync {
                    job: self.job,
                    slot: h.slot,
                    detail: format!(
                        "RESULT for round {} while this worker is at round {}",
                        h.round, st.round
                    ),
                });
                return;
            }
            core::cmp::Ordering::Equal => {}
        }
        let (si, ci) = self.locate(st.chunk);
        if h.offset != st.chunk || h.op != self.streams[si].op || h.lanes as usize != self.lanes {
            self.fail(AgentError::Desync {
                job: self.job,
                slot: h.slot,
                detail: format!(
                    "round {}: this worker sent chunk {} ({:?}, {} lanes) but the result is for chunk {} ({:?}, {} lanes)",
                    st.round, st.chunk, self.streams[si].op, self.lanes, h.offset, h.op, h.lanes
                ),
            });
            return;
        }
        if h.count as usize != self.world || h.bitmap != self.full_bitmap {
            // Not a complete aggregate of this job's workers: a forged or corrupted RESULT.
            self.stats.rejected += 1;
            return;
        }
        // Write the aggregate over the chunk's input words.
        let start = ci * self.lanes;
        let words = &mut self.streams[si].words;
        let end = (start + self.lanes).min(words.len());
        if let Err(e) = p.read_lanes(&mut self.scratch) {
            let slot = h.slot;
            self.fail(AgentError::Desync {
                job: self.job,
                slot,
                detail: e.to_string(),
            });
            return;
        }
        let words = &mut self.streams[si].words;
        words[start..end].copy_from_slice(&self.scratch[..end - start]);
        // Karn's rule, extended: a chunk that was resent, or whose PROBE was answered
        // "waiting for others", may have waited for another worker's recovery, and its "RTT"
        // would inflate the RTO to the point where every later loss waits for max_rto.
        if st.sends == 1 && st.status.is_none() {
            if let Some(t0) = st.first_sent {
                self.sample_rtt(now.saturating_duration_since(t0));
            }
        }
        self.slots[w].busy = false;
        self.slots[w].deadline = None;
        self.done_chunks += 1;
        self.stats.chunks += 1;
        self.mark_done(st.chunk);
        // Gap evidence: every worker sends chunks in order and links are FIFO, so slots
        // complete in chunk order. An open earlier chunk whose last transmission left before
        // this one's is therefore overdue: its DATA (ours or another worker's) or its RESULT
        // was lost. (Comparing send times alone is wrong: after a resend, chunks sent earlier
        // may legitimately still wait for a slower worker.)
        if let Some(sent) = st.last_sent {
            let by = now + self.cfg.reorder_window;
            for o in self.slots.iter_mut() {
                if o.busy
                    && !o.evidence
                    && o.chunk < st.chunk
                    && o.last_sent.is_some_and(|t| t < sent)
                {
                    o.evidence = true;
                    o.deadline = Some(o.deadline.map_or(by, |d| d.min(by)));
                }
            }
        }
        let next = st.chunk + self.window as u32;
        if next < self.total_chunks {
            self.begin_chunk(next);
        }
        if self.done_chunks == self.total_chunks {
            self.running = false;
            self.queue.clear();
            self.stats.operations += 1;
        }
    }

    /// Rank `rank`'s worker exited. The operation fails with [`AgentError::PeerGone`] as soon
    /// as a STATUS shows a slot still missing its contribution; every open slot is probed
    /// now, and later slots when their timers expire (probe before resend), so a rank that
    /// left after contributing everything it had to is no error.
    pub fn peer_gone(&mut self, _now: Instant, rank: u8) {
        if rank as usize >= self.world || self.gone & (1 << rank) != 0 {
            return;
        }
        tracing::debug!(
            job = self.job,
            rank,
            "a rank's worker exited; probing open slots"
        );
        self.gone |= 1 << rank;
        if !self.running {
            return;
        }
        for w in 0..self.window {
            if self.slots[w].busy && self.slots[w].first_sent.is_some() {
                self.queue_probe(w);
            }
        }
    }

    /// A PROBE of the first window slot (at its latest round), for an idle job: any PROBE the
    /// switch accepts renews the job's lease, and its STATUS is ignored. `None` while an
    /// operation runs (its own traffic keeps the lease) or if `buf` is too small.
    pub fn keepalive_probe(&self, buf: &mut [u8]) -> Option<Transmit> {
        if self.running || self.failed.is_some() {
            return None;
        }
        let round = self.rounds[0].wrapping_sub(1);
        let h = Header::request(
            Kind::Probe,
            self.job,
            self.epoch,
            self.rank,
            self.slot_base,
            round,
        );
        let len = packet::build(&h, &[], buf).ok()?;
        Some(Transmit {
            len,
            slot: self.slot_base,
        })
    }

    /// Records chunk `k` as complete and advances the contiguous frontier.
    fn mark_done(&mut self, k: u32) {
        let k = k as usize;
        self.done_bits[k / 64] |= 1 << (k % 64);
        while (self.frontier as usize) < self.total_chunks as usize {
            let f = self.frontier as usize;
            if self.done_bits[f / 64] & (1 << (f % 64)) == 0 {
                break;
            }
            self.frontier += 1;
        }
    }

    /// Words of stream `i` whose aggregate is final, counted from the stream's start (so a
    /// caller can start consuming a stream before the whole operation completes).
    pub fn completed_prefix(&self, i: usize) -> usize {
        let Some(m) = self.meta.get(i) else {
            return 0;
        };
        let done = self.frontier.saturating_sub(m.first_chunk).min(m.chunks) as usize;
        let len = self.streams.get(i).map_or(0, |s| s.words.len());
        (done * self.lanes).min(len)
    }

    fn fail(&mut self, e: AgentError) {
        tracing::warn!(error = %e, "aggregation failed");
        self.failed = Some(e);
        self.running = false;
        self.queue.clear();
    }

    fn timeout_error(&self, w: usize, waited: Duration) -> AgentError {
        let st = &self.slots[w];
        let slot = self.slot_base + w as u32;
        let (missing, detail) = match st.status {
            None => (
                None,
                "no RESULT and no STATUS reply to PROBEs: the switch is unreachable (or drops this job's packets)".to_string(),
            ),
            Some((round, count, bitmap)) => match round_cmp(round, st.round) {
                core::cmp::Ordering::Equal => {
                    let missing: Vec<u8> = (0..self.world as u8)
                        .filter(|r| bitmap & self.full_bitmap & (1u32 << r) == 0)
                        .collect();
                    let text = format!(
                        "the switch holds {count}/{} contributions (bitmap {bitmap:#x}); ranks {missing:?} never arrived",
                        self.world
                    );
                    (Some(missing), text)
                }
                core::cmp::Ordering::Less => {
                    let missing: Vec<u8> = (0..self.world as u8).collect();
                    (
                        Some(missing.clone()),
                        format!("the switch's slot set is still at round {round}: no rank's contribution of this round arrived (ranks {missing:?})"),
                    )
                }
                core::cmp::Ordering::Greater => (
                    None,
                    format!("the switch's slot set is already at round {round}, ahead of this worker: workers are out of step"),
                ),
            },
        };
        AgentError::SlotTimeout {
            job: self.job,
            slot,
            round: st.round,
            chunk: st.chunk,
            waited,
            missing,
            detail,
        }
    }

    /// Processes expired timers: queues retransmissions and probes, or fails the operation.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.running {
            return;
        }
        // Expired slots without evidence are each probed (read-only, header-sized): a
        // STATUS per slot is the only way to tell "my DATA was lost" from "waiting for a
        // slower worker" there. Probing only the oldest and backing off the rest on a
        // "waiting" answer livelocked when two workers' losses sat in different slots.
        for w in 0..self.window {
            let st = self.slots[w];
            if !st.busy {
                continue;
            }
            let (Some(t0), Some(deadline)) = (st.first_sent, st.deadline) else {
                continue;
            };
            if now < deadline {
                continue;
            }
            let waited = now.saturating_duration_since(t0);
            if waited >= self.cfg.worker_timeout {
                let e = self.timeout_error(w, waited);
                self.fail(e);
                return;
            }
            let diagnose = waited >= self.cfg.probe_after;
            if st.evidence {
                // Lost: resend the DATA.
                self.queue_data(w);
                if diagnose {
                    self.queue_probe(w);
                }
            } else if st.probe_sent.is_some() {
                // The PROBE went unanswered: probe again, backing the timer off exponentially
                // (as TCP's RTO), without resending the DATA. Until the first RTT sample the
                // RTO is a guess; on a slow path (bmv2, a queue) every chunk would otherwise
                // be resent several times before its RESULT, and never give a sample. A lost
                // DATA shows in the STATUS that eventually answers.
                self.slots[w].rto = (st.rto * 2).min(self.cfg.max_rto);
                self.queue_probe(w);
                if diagnose {
                    self.queue_data(w);
                }
            } else if diagnose {
                self.queue_data(w);
                self.queue_probe(w);
            } else {
                self.queue_probe(w);
            }
            // Until the packet actually leaves, do not fire again.
            if self.slots[w].queued_data || self.slots[w].queued_probe {
                self.slots[w].deadline = None;
            }
        }
    }

    fn queue_data(&mut self, w: usize) {
        let s = &mut self.slots[w];
        if !s.queued_data {
            s.queued_data = true;
            self.queue.push_back((w as u32, Pending::Data));
        }
    }

    fn queue_probe(&mut self, w: usize) {
        let s = &mut self.slots[w];
        if !s.queued_probe {
            s.queued_probe = true;
            self.queue.push_back((w as u32, Pending::Probe));
        }
    }

    /// The next datagram to send, written into `buf` (at least
    /// [`Aggregation::max_datagram`] bytes). Processes expired timers first.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.handle_timeout(now);
        while let Some((w, kind)) = self.queue.pop_front() {
            let w = w as usize;
            if !self.running || !self.slots[w].busy {
                continue;
            }
            match kind {
                Pending::Data => {
                    self.slots[w].queued_data = false;
                    let h = self.header(w, Kind::Data);
                    let len = h.packet_len();
                    let st = self.slots[w];
                    let (si, ci) = self.locate(st.chunk);
                    let words = &self.streams[si].words;
                    let start = ci * self.lanes;
                    let end = (start + self.lanes).min(words.len());
                    let mut p = Packet::new_unchecked(&mut buf[..len]);
                    p.set_header(&h);
                    if let Err(e) = p.write_lanes_padded(&words[start..end]) {
                        self.fail(AgentError::Config(e.to_string()));
                        return None;
                    }
                    let s = &mut self.slots[w];
                    if s.sends > 0 {
                        self.stats.retransmissions += 1;
                    }
                    s.sends += 1;
                    s.first_sent.get_or_insert(now);
                    s.last_sent = Some(now);
                    s.evidence = false;
                    let t0 = s.first_sent.unwrap_or(now);
                    s.deadline = Some((now + s.rto).min(t0 + self.cfg.worker_timeout));
                    self.stats.packets_sent += 1;
                    self.stats.bytes_sent += len as u64;
                    return Some(Transmit { len, slot: h.slot });
                }
                Pending::Probe => {
                    self.slots[w].queued_probe = false;
                    let h = self.header(w, Kind::Probe);
                    let len = match packet::build(&h, &[], buf) {
                        Ok(len) => len,
                        Err(e) => {
                            self.fail(AgentError::Config(e.to_string()));
                            return None;
                        }
                    };
                    let s = &mut self.slots[w];
                    s.probe_sent = Some(now);
                    s.probes += 1;
                    let t0 = s.first_sent.unwrap_or(now);
                    let at = (now + s.rto).min(t0 + self.cfg.worker_timeout);
                    s.deadline = Some(s.deadline.map_or(at, |d| d.min(at)));
                    self.stats.probes += 1;
                    return Some(Transmit { len, slot: h.slot });
                }
            }
        }
        None
    }

    /// When [`Aggregation::handle_timeout`] (or `poll_transmit`) must next run, if anything
    /// is in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.running {
            return None;
        }
        self.slots
            .iter()
            .filter(|s| s.busy)
            .filter_map(|s| s.deadline)
            .min()
    }

    /// Whether datagrams are queued for transmission.
    pub fn has_pending(&self) -> bool {
        self.running && !self.queue.is_empty()
    }
}
