//! A deterministic, seeded, in-process network for driving sans-I/O agents against a sans-I/O
//! switch (quinn-proto / smoltcp style tests): virtual time, per-packet latency with jitter
//! (so packets reorder), loss and duplication in both directions.
//!
//! The switch is any `FnMut(from, datagram, emit)`, e.g. a closure around
//! `sketchreduce_switch::SwitchCore::handle`, so this module does not depend on the switch
//! crate.

use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::Endpoint;

/// Network impairments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Probability that a datagram is lost (each direction, each datagram).
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Minimum one-way latency.
    pub latency: Duration,
    /// Extra uniformly random latency in `[0, jitter)`; reorders packets (ignored when `rate`
    /// is set: links are then FIFO).
    pub jitter: Duration,
    /// Bytes per second of every link (each agent's uplink and downlink, as switch ports);
    /// `None`: infinitely fast links. With a rate, a datagram waits for the link to finish
    /// the ones queued before it (FIFO), so bursts queue as in a real port buffer.
    pub rate: Option<f64>,
    /// Seed of the impairment PRNG.
    pub seed: u64,
    /// Virtual time after which [`SimNet::run`] gives up (a safety net: a correct agent
    /// always finishes or fails on its own before).
    pub limit: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            loss: 0.0,
            duplicate: 0.0,
            latency: Duration::from_micros(20),
            jitter: Duration::from_micros(100),
            seed: 1,
            limit: Duration::from_secs(600),
            rate: None,
        }
    }
}

/// SplitMix64: a tiny, seedable PRNG (no dependency, identical on every platform).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Event {
    at: Duration,
    seq: u64,
    to: usize,
    from: usize,
    data: Vec<u8>,
}

impl Ord for Event {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Min-heap by (time, sequence).
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Counters of a simulation run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Datagrams dropped by the loss model.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Datagrams delivered.
    pub delivered: u64,
}

/// Node index of the switch; agents are `1..=n`.
const SWITCH: usize = 0;

/// The simulated network.
pub struct SimNet<S> {
    cfg: SimConfig,
    rng: SplitMix64,
    switch: S,
    epoch: Instant,
    now: Duration,
    seq: u64,
    events: BinaryHeap<Event>,
    /// Which agents still take part (a "killed" agent neither sends nor receives).
    alive: Vec<bool>,
    /// Per link, when it finishes sending what is queued: uplinks `0..n`, downlinks `n..2n`.
    busy_until: Vec<Duration>,
    stats: SimStats,
}

/// Address of agent `i` in the simulation.
pub fn agent_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1 + i as u8], 40000))
}

/// Address of the simulated switch.
pub fn switch_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 254], sketchreduce_wire::DEFAULT_DATA_PORT))
}

impl<S> SimNet<S>
where
    S: FnMut(SocketAddr, &[u8], &mut dyn FnMut(SocketAddr, &[u8])),
{
    /// A network around `switch` with `agents` agents at [`agent_addr`]`(i)`.
    pub fn new(cfg: SimConfig, agents: usize, switch: S) -> Self {
        SimNet {
            rng: SplitMix64(cfg.seed),
            cfg,
            switch,
            epoch: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            events: BinaryHeap::new(),
            alive: vec![true; agents],
            busy_until: vec![Duration::ZERO; 2 * agents],
            stats: SimStats::default(),
        }
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.epoch + self.now
    }

    /// The virtual instant at which the simulation started.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Stops agent `i` from sending or receiving anything (a crashed worker).
    pub fn kill(&mut self, i: usize) {
        self.alive[i] = false;
    }

    fn post(&mut self, from: usize, to: usize, data: &[u8]) {
        self.stats.sent += 1;
        if self.rng.next_f64() < self.cfg.loss {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.next_f64() < self.cfg.duplicate {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = match self.cfg.rate {
                Some(rate) => {
                    let n = self.alive.len();
                    let link = if to == SWITCH { from - 1 } else { n + to - 1 };
                    let start = self.busy_until[link].max(self.now);
                    // Ethernet + IPv4 + UDP headers travel too.
                    let wire = (data.len() + 42) as f64 / rate;
                    self.busy_until[link] = start + Duration::from_secs_f64(wire);
                    self.busy_until[link] + self.cfg.latency
                }
                None => {
                    let jitter = self.cfg.jitter.as_nanos() as u64;
                    let extra = if jitter > 0 {
                        self.rng.next_u64() % jitter
                    } else {
                        0
                    };
                    self.now + self.cfg.latency + Duration::from_nanos(extra)
                }
            };
            self.seq += 1;
            self.events.push(Event {
                at,
                seq: self.seq,
                to,
                from,
                data: data.to_vec(),
            });
        }
    }

    fn flush<E: Endpoint>(&mut self, agents: &mut [E], buf: &mut [u8]) {
        let now = self.now();
        for (i, agent) in agents.iter_mut().enumerate() {
            if !self.alive[i] {
                continue;
            }
            while let Some(t) = agent.poll_transmit(now, buf) {
                let data = buf[..t.len].to_vec();
                self.post(1 + i, SWITCH, &data);
            }
        }
    }

    /// Lets `d` of virtual time pass (delivering datagrams and firing timers on the way),
    /// e.g. before starting a late worker's operation.
    pub fn run_for<E: Endpoint>(&mut self, agents: &mut [E], d: Duration) {
        let until = self.now + d;
        let limit = self.cfg.limit;
        self.cfg.limit = until;
        self.run(agents, |_| false);
        self.cfg.limit = limit;
        self.now = self.now.max(until);
    }

    /// Runs until `done(agents)` holds, every live agent is idle (no timer), or the time
    /// limit passes. Returns whether `done` held.
    pub fn run<E: Endpoint>(
        &mut self,
        agents: &mut [E],
        mut done: impl FnMut(&mut [E]) -> bool,
    ) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let addrs: Vec<SocketAddr> = (0..agents.len()).map(agent_addr).collect();
        loop {
            self.flush(agents, &mut buf);
            if done(agents) {
                return true;
            }
            let next_timer = agents
                .iter()
                .zip(&self.alive)
                .filter(|(_, a)| **a)
                .filter_map(|(e, _)| e.poll_timeout())
                .min()
                .map(|t| t.saturating_duration_since(self.epoch));
            let next_event = self.events.peek().map(|e| e.at);
            let next = match (next_timer, next_event) {
                (None, None) => return done(agents),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (Some(a), Some(b)) => a.min(b),
            };
            if next > self.cfg.limit {
                return false;
            }
            self.now = self.now.max(next);
            while self.events.peek().is_some_and(|e| e.at <= self.now) {
                let Some(ev) = self.events.pop() else { break };
                self.stats.delivered += 1;
                if ev.to == SWITCH {
                    if ev.from > 0 && !self.alive[ev.from - 1] {
                        continue;
                    }
                    let mut out: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
                    (self.switch)(addrs[ev.from - 1], &ev.data, &mut |dst, d| {
                        out.push((dst, d.to_vec()))
                    });
                    for (dst, d) in out {
                        if let Some(j) = addrs.iter().position(|a| *a == dst) {
                            self.post(SWITCH, 1 + j, &d);
                        }
                    }
                } else {
                    let i = ev.to - 1;
                    if self.alive[i] {
                        let now = self.now();
                        agents[i].handle_datagram(now, &ev.data);
                    }
                }
            }
        }
    }
}
