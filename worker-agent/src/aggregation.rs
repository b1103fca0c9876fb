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
//! - an unanswered chunk is retransmitted (the identical packet) after a retransmission timeout
//!   (RTO) that starts at [`AggConfig::initial_rto`], follows a smoothed RTT estimate (Karn's
//!   rule: only chunks sent once are sampled) and doubles per retransmission up to
//!   [`AggConfig::max_rto`];
//! - a chunk unanswered for [`AggConfig::probe_after`] is also PROBEd; one unanswered for
//!   [`AggConfig::worker_timeout`] fails the operation with [`AgentError::SlotTimeout`], which
//!   names the job, the slot, the round and the ranks the switch's STATUS bitmap lacks (or says
//!   that no STATUS came back at all). Nothing ever waits without a deadline.
//!
//! Results are written in place over the stream's input words (a chunk's input is no longer
//! needed once its result is in), so an operation allocates nothing per packet.
//!
//! The I/O shell calls [`Aggregation::handle_datagram`] for every datagram received,
//! [`Aggregation::poll_transmit`] until it returns `None` after every event, and sleeps at most
//! until [`Aggregation::poll_timeout`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sketchreduce_wire::packet::{self, round_cmp, HEADER_LEN, LANE_BYTES};
use sketchreduce_wire::{Header, JobSpec, Kind, Op, Packet};

use crate::error::AgentError;

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
            initial_rto: Duration::from_millis(4),
            min_rto: Duration::from_millis(1),
            max_rto: Duration::from_millis(100),
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
    deadline: Option<Instant>,
    rto: Duration,
    sends: u32,
    queued_data: bool,
    queued_probe: bool,
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
            deadline: None,
            rto: Duration::ZERO,
            sends: 0,
            queued_data: false,
            queued_probe: false,
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
    next_chunk: u32,
    done_chunks: u32,
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

    fn begin_chunk(&mut self, k: u32) {
        let w = k as usize % self.window;
        let round = self.rounds[w];
        self.rounds[w] = round.wrapping_add(1);
        let rto = self.current_rto();
        self.slots[w] = SlotState {
            busy: true,
            chunk: k,
            round,
            first_sent: None,
            deadline: None,
            rto,
            sends: 0,
            queued_data: true,
            queued_probe: false,
            status: None,
        };
        self.queue.push_back((w as u32, Pending::Data));
        self.next_chunk = k + 1;
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
        Header {
            kind,
            op: self.streams[si].op,
            rank: self.rank,
            job: self.job,
            lanes: if kind == Kind::Data {
                self.lanes as u16
            } else {
                0
            },
            epoch: self.epoch,
            slot: self.slot_base + w as u32,
            set: (st.round & 1) as u8,
            count: 0,
            flags: 0,
            round: st.round,
            offset: st.chunk,
            bitmap: 0,
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
        if h.job != self.job
            || h.epoch != self.epoch
            // A NACK STATUS (job unknown or re-created on the switch) is not a slot's status.
            || h.flags != 0
            || h.slot < self.slot_base
            || h.slot - self.slot_base >= self.window as u32
        {
            self.stats.ignored += 1;
            return;
        }
        let w = (h.slot - self.slot_base) as usize;
        match h.kind {
            Kind::Result => self.on_result(now, w, &h, &p),
            Kind::Status => {
                let st = &mut self.slots[w];
                if self.running && st.busy && h.offset == st.chunk {
                    st.status = Some((h.round, h.count, h.bitmap));
                } else {
                    self.stats.ignored += 1;
                }
            }
            _ => self.stats.ignored += 1,
        }
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
        if st.sends == 1 {
            if let Some(t0) = st.first_sent {
                self.sample_rtt(now.saturating_duration_since(t0));
            }
        }
        self.slots[w].busy = false;
        self.slots[w].deadline = None;
        self.done_chunks += 1;
        self.stats.chunks += 1;
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
            let s = &mut self.slots[w];
            if !s.queued_data {
                s.queued_data = true;
                self.queue.push_back((w as u32, Pending::Data));
            }
            if waited >= self.cfg.probe_after && !s.queued_probe {
                s.queued_probe = true;
                self.queue.push_back((w as u32, Pending::Probe));
            }
            // Until the packet actually leaves, do not fire again.
            s.deadline = None;
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
                        s.rto = (s.rto * 2).min(self.cfg.max_rto);
                    }
                    s.sends += 1;
                    if s.first_sent.is_none() {
                        s.first_sent = Some(now);
                    }
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
