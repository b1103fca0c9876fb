//! Job configuration: who the workers are, which algorithm, which lane width.
//!
//! A [`Config`] comes from code or from the torch.distributed-style environment variables
//! ([`Config::from_env`]). Every rank must use the same configuration except for its rank and
//! local timeouts; the rendezvous compares [`Config::fingerprint`] and refuses mismatches.

use crate::error::{CollectiveError, Result};
use sketchreduce_codec::LaneWidth;
use sketchreduce_control::Secret;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// Aggregate density (Σ over ranks of nonzeros / length) above which [`Algo::Auto`] uses the
/// dense ring for a *flat* tensor (a dense buffer, or a sparse vector of single values).
/// See [`auto_crossover`] for how it was measured.
pub const AUTO_CROSSOVER: f64 = 0.08;

/// Aggregate density (Σ over ranks of nonzero values / length) above which [`Algo::Auto`]
/// uses the dense ring for a *row-sparse* tensor (a sparse COO tensor whose blocks are rows of
/// at least [`AUTO_ROW_BLOCK`] values, e.g. an embedding gradient). See [`auto_crossover`].
pub const AUTO_CROSSOVER_ROWS: f64 = 0.8;

/// Smallest block width (values per sparse index) treated as row-sparse by [`auto_crossover`].
pub const AUTO_ROW_BLOCK: usize = 8;

/// The default [`Algo::Auto`] crossover for a tensor of `block` values per sparse index
/// (1 = flat) in a job of `world_size` ranks: the aggregate density Σnnz/d above which the
/// dense ring beats the sparse all-gather.
///
/// # How it was measured
/// `cargo run --release -p sketchreduce-collectives --example crossover W 20 B [innet]`: ranks
/// as threads on 127.0.0.1 of a 2-core box (shared with other work, so ±30 % noise), d = 2^20
/// values, 32-bit lanes, median of 7 runs, slowest rank. `B = 1`: flat (every nonzero is an
/// (index, value) pair); `B = 32`: row-sparse `SparseVec`s of 32-wide rows chosen uniformly
/// (one index per 32 values), as the sparse embedding gradients of `train_ncf` are.
///
/// | pattern | workers | all-gather ms → ring ms at Σnnz/d | crossover |
/// |---|---|---|---|
/// | flat | 2 | 7.2 / 11.8 at 0.05; 14.7 / 12.6 at 0.10 | ≈ 0.08 |
/// | flat | 4 | 17.2 / 21.1 at 0.04; 28.4 / 21.6 at 0.10 (rerun: 23.7 / 25.5 at 0.10; 38.1 / 35.6 at 0.20) | ≈ 0.1 |
/// | flat | 8 | 45.4 / 50.7 at 0.08; 118 / 78 at 0.20 | ≈ 0.08 |
/// | rows of 32 | 2 | 7.7 / 11.3 at 0.5; 33.6 / 31.8 at 0.8 | ≈ 0.8 |
/// | rows of 32 | 4 | 22.6 / 39.0 at 0.8; 34.5 / 33.2 at 1.0 | ≈ 1.0 |
/// | rows of 32 | 8 | 44.0 / 67.3 at 0.4; 60.9 / 61.3 at 0.8 | ≈ 0.8 |
///
/// Expressed as an *aggregate* density the crossover barely moves with the world size (the
/// all-gather's total work is every rank merging Σnnz pairs, the ring's is every rank
/// touching ~2d lanes, and all ranks share the same 2 cores), so `world_size` does not change
/// the value for 2–8 ranks; per rank, the crossover density is this value / `world_size`.
/// Row-sparse tensors stay on the sparse path ten times longer because one 4-byte index
/// serves a whole row and the merge adds whole rows, while a flat all-gather pays an index
/// and a random access per value. The byte-count model alone would put both crossovers near
/// 1.0; on the CPU-bound loopback the per-pair work dominates. Block widths 2–7 are not
/// measured and use the (conservative) flat value.
///
/// The in-network path (`innet`, software switch on loopback) was measured slower than both at
/// every density (row-sparse, 4 workers: 83 ms at Σnnz/d = 0.04 vs 1.7 ms all-gather and
/// 31 ms ring; 1,746 ms at 4.0), so `auto` only uses it when [`Config::auto_innet`] is set.
///
/// Override per job with [`Config::crossover`] and [`Config::crossover_rows`].
pub fn auto_crossover(block: usize, world_size: usize) -> f64 {
    let _ = world_size; // measured flat over 2..=8 ranks, see above
    if block >= AUTO_ROW_BLOCK {
        AUTO_CROSSOVER_ROWS
    } else {
        AUTO_CROSSOVER
    }
}

/// Default per-operation timeout, 30 minutes as torch.distributed's (gloo) default: an
/// operation (barrier included) fails once a peer has sent nothing for this long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Default rendezvous timeout: how long rank 0 waits for every rank to check in, and others
/// retry reaching rank 0. Shorter than torch's (which uses the 30-minute operation timeout
/// there too) so a missing rank is reported within a minute; set
/// `SKETCHREDUCE_RENDEZVOUS_TIMEOUT_SECS=1800` for torch's behaviour.
pub const DEFAULT_RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest world size accepted (a larger `WORLD_SIZE` is a configuration mistake; rank 0 keeps
/// per-rank state during the rendezvous).
pub const MAX_WORLD_SIZE: usize = 1 << 16;

/// Largest accepted timeout (one year): larger values are configuration mistakes, and
/// deadlines computed from them must not overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a timeout in seconds: a finite, positive number up to [`MAX_TIMEOUT`]
/// (`nan`, `inf`, negative, zero or garbage are configuration errors naming `name`).
pub fn parse_timeout_secs(name: &str, v: &str) -> Result<Duration> {
    let bad = |why: &str| CollectiveError::Config(format!("{name}={v:?}: {why}"));
    let secs: f64 = v
        .trim()
        .parse()
        .map_err(|_| bad("not a number of seconds"))?;
    if !secs.is_finite() {
        return Err(bad("must be a finite number of seconds"));
    }
    if secs <= 0.0 {
        return Err(bad("must be positive"));
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|_| bad("out of range"))?;
    if d.is_zero() {
        return Err(bad("must be positive (rounds to zero)"));
    }
    if d > MAX_TIMEOUT {
        return Err(bad("more than a year"));
    }
    Ok(d)
}

/// Which all-reduce algorithm to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algo {
    /// Through the switch with the homomorphic codec (the worker agent).
    Innet,
    /// Dense ring all-reduce (reduce-scatter + all-gather) over TCP on fixed-point lanes.
    Ring,
    /// Sparse all-gather of (index, fixed value) pairs over TCP, summed locally.
    AllGather,
    /// Per tensor from its aggregate density and structure: above [`Config::crossover`]
    /// (flat tensors) or [`Config::crossover_rows`] (row-sparse tensors) → ring, else the
    /// sparse all-gather — or innet when [`Config::auto_innet`] is set and a switch is
    /// configured. See [`auto_crossover`].
    Auto,
}

impl Algo {
    /// Name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Innet => "innet",
            Algo::Ring => "ring",
            Algo::AllGather => "allgather",
            Algo::Auto => "auto",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Algo::Innet => 0,
            Algo::Ring => 1,
            Algo::AllGather => 2,
            Algo::Auto => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        [Algo::Innet, Algo::Ring, Algo::AllGather, Algo::Auto]
            .into_iter()
            .find(|a| a.code() == c)
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algo {
    type Err = CollectiveError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "innet" => Ok(Algo::Innet),
            "ring" => Ok(Algo::Ring),
            "allgather" | "all-gather" => Ok(Algo::AllGather),
            "auto" => Ok(Algo::Auto),
            o => Err(CollectiveError::Config(format!(
                "unknown algorithm {o:?} (innet|ring|allgather|auto)"
            ))),
        }
    }
}

/// Transport between a worker and the switch (in-network path only; ring and all-gather use
/// TCP between workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain UDP (default).
    Udp,
    /// QUIC datagrams.
    Quic,
}

impl Transport {
    /// Name used on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Quic => "quic",
        }
    }
}

impl FromStr for Transport {
    type Err = CollectiveError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Ok(Transport::Udp),
            "quic" => Ok(Transport::Quic),
            o => Err(CollectiveError::Config(format!(
                "unknown transport {o:?} (udp|quic)"
            ))),
        }
    }
}

/// How values become integers. All algorithms share it, which is what makes their results
/// bit-identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodecPolicy {
    /// Width of the fixed-point values (see [`Precision`] and `docs/design.md`, "Exactness
    /// model"): [`Precision::Auto`] (default) takes 32-bit values unless the operation's
    /// dynamic range would cost its typical values their precision, then `64 − ⌈log2 n⌉`
    /// bits (two 32-bit lanes through the switch).
    pub precision: Precision,
    /// How innet carries its payload: [`InnetMode::Auto`] (default) picks dense lanes,
    /// the sketch or union-rank by bytes and union size (`docs/design.md`, "Worker agent").
    pub innet_mode: InnetMode,
}

/// Payload mode of in-network operations (the agent's [`sketchreduce_agent::ModeChoice`]).
pub use sketchreduce_agent::ModeChoice as InnetMode;

/// Width policy of the fixed-point values (the codec's [`sketchreduce_codec::ValuePolicy`]).
pub use sketchreduce_codec::ValuePolicy as Precision;

/// Everything a rank needs to join a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Rendezvous endpoint served by rank 0 (`MASTER_ADDR:MASTER_PORT`).
    pub master: SocketAddr,
    /// Default algorithm (per-call overrides exist).
    pub algo: Algo,
    /// Switch control endpoint for the in-network path (`None`: innet unavailable).
    pub switch: Option<SocketAddr>,
    /// Worker ↔ switch transport.
    pub transport: Transport,
    /// Fixed-point policy.
    pub codec: CodecPolicy,
    /// [`Algo::Auto`] crossover (aggregate density) for flat tensors (dense buffers and
    /// sparse vectors of single values): where the all-gather's CPU cost meets the ring's on a
    /// link so fast that bytes cost nothing; the cost model ([`crate::cost`]) derives the
    /// all-gather's CPU cost from it. Default: [`auto_crossover`]`(1, world_size)`.
    pub crossover: f64,
    /// [`Algo::Auto`] crossover (aggregate density) for row-sparse tensors (blocks of at least
    /// [`AUTO_ROW_BLOCK`] values, e.g. embedding gradients). Default:
    /// [`auto_crossover`]`(32, world_size)`.
    pub crossover_rows: f64,
    /// Let [`Algo::Auto`] consider the switch (innet) when one is configured: the cost model
    /// ([`crate::cost`]) then compares it with the ring and the all-gather on the measured link.
    /// On by default; `SKETCHREDUCE_AUTO_INNET=0` keeps `auto` off the switch.
    pub auto_innet: bool,
    /// Job id used with the switch.
    pub job_id: u16,
    /// Per-operation timeout: an operation fails once a peer has sent nothing for this long
    /// (the in-network path: once a chunk has gone unanswered this long). Default
    /// [`DEFAULT_TIMEOUT`] (30 min, as torch.distributed). Env: `SKETCHREDUCE_TIMEOUT_SECS`.
    pub timeout: Duration,
    /// How long rank 0 waits for everyone at the rendezvous (and others retry connecting).
    /// Default [`DEFAULT_RENDEZVOUS_TIMEOUT`]. Env: `SKETCHREDUCE_RENDEZVOUS_TIMEOUT_SECS`.
    pub rendezvous_timeout: Duration,
    /// The job secret, which authenticates the rendezvous, the ring links and the switch's
    /// control endpoint (`docs/security.md`). `None`: taken from the environment when the
    /// job connects (`SKETCHREDUCE_SECRET_FILE`, else `SKETCHREDUCE_SECRET`, as the switch
    /// reads them); without one there either, the rendezvous is unauthenticated (bounded,
    /// like torch.distributed's). Not part of the [`Self::fingerprint`].
    pub secret: Option<Secret>,
}

impl Config {
    /// A configuration for `rank` of `world_size` with rendezvous at `master`, ring algorithm,
    /// 32-bit lanes and default timeouts.
    pub fn new(rank: usize, world_size: usize, master: SocketAddr) -> Self {
        Config {
            rank,
            world_size,
            master,
            algo: Algo::Ring,
            switch: None,
            transport: Transport::Udp,
            codec: CodecPolicy::default(),
            crossover: auto_crossover(1, world_size),
            crossover_rows: auto_crossover(32, world_size),
            auto_innet: true,
            job_id: 1,
            timeout: DEFAULT_TIMEOUT,
            rendezvous_timeout: DEFAULT_RENDEZVOUS_TIMEOUT,
            secret: None,
        }
    }

    /// Builder: job secret (see [`Config::secret`]).
    pub fn with_secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// The secret the job uses: [`Config::secret`], else the one in the environment
    /// (`SKETCHREDUCE_SECRET_FILE`, else `SKETCHREDUCE_SECRET`), else none. An unreadable or
    /// too short secret is a [`CollectiveError::Config`].
    pub fn job_secret(&self) -> Result<Option<Secret>> {
        match &self.secret {
            Some(s) => Ok(Some(s.clone())),
            None => Secret::from_env().map_err(|e| CollectiveError::Config(e.to_string())),
        }
    }

    /// Builder: rendezvous timeout.
    pub fn with_rendezvous_timeout(mut self, timeout: Duration) -> Self {
        self.rendezvous_timeout = timeout;
        self
    }

    /// Builder: algorithm.
    pub fn with_algo(mut self, algo: Algo) -> Self {
        self.algo = algo;
        self
    }

    /// Builder: switch control endpoint.
    pub fn with_switch(mut self, switch: SocketAddr) -> Self {
        self.switch = Some(switch);
        self
    }

    /// Builder: per-operation timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builder: a fixed lane width (32 = [`Precision::Narrow`], 64 = [`Precision::Wide`]).
    pub fn with_lane(mut self, lane: LaneWidth) -> Self {
        self.codec.precision = match lane {
            LaneWidth::W32 => Precision::Narrow,
            LaneWidth::W64 => Precision::Wide,
        };
        self
    }

    /// Builder: value width policy.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.codec.precision = precision;
        self
    }

    /// Reads `RANK`, `WORLD_SIZE`, `MASTER_ADDR` (default 127.0.0.1), `MASTER_PORT` (default
    /// 29500) like torch.distributed, plus optional `SKETCHREDUCE_ALGO`,
    /// `SKETCHREDUCE_SWITCH` (host:port of the switch control endpoint),
    /// `SKETCHREDUCE_TRANSPORT`, `SKETCHREDUCE_LANE` (32|64), `SKETCHREDUCE_TIMEOUT_SECS`
    /// (per-operation timeout, default 1800), `SKETCHREDUCE_RENDEZVOUS_TIMEOUT_SECS` (default
    /// 60), `SKETCHREDUCE_JOB`. Timeouts are seconds (fractions allowed), finite and positive;
    /// anything else is a [`CollectiveError::Config`].
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over an arbitrary lookup (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        fn parse<T: FromStr>(name: &str, v: &str) -> Result<T> {
            v.trim()
                .parse()
                .map_err(|_| CollectiveError::Config(format!("{name}={v:?} is not valid")))
        }
        let rank: usize = parse(
            "RANK",
            &get("RANK").ok_or_else(|| CollectiveError::Config("RANK is not set".into()))?,
        )?;
        let world: usize = parse(
            "WORLD_SIZE",
            &get("WORLD_SIZE")
                .ok_or_else(|| CollectiveError::Config("WORLD_SIZE is not set".into()))?,
        )?;
        let host = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port: u16 = parse("MASTER_PORT", &get("MASTER_PORT").unwrap_or("29500".into()))?;
        let master = resolve(&host, port)?;
        let mut c = Config::new(rank, world, master);
        if let Some(a) = get("SKETCHREDUCE_ALGO") {
            c.algo = a.parse()?;
        }
        if let Some(s) = get("SKETCHREDUCE_SWITCH") {
            let (h, p) = s.rsplit_once(':').ok_or_else(|| {
                CollectiveError::Config(format!("SKETCHREDUCE_SWITCH={s:?}: expected host:port"))
            })?;
            c.switch = Some(resolve(h, parse("SKETCHREDUCE_SWITCH port", p)?)?);
        }
        if let Some(t) = get("SKETCHREDUCE_TRANSPORT") {
            c.transport = t.parse()?;
        }
        if let Some(l) = get("SKETCHREDUCE_LANE") {
            // Kept for compatibility: a fixed width.
            c.codec.precision = match l.trim() {
                "32" => Precision::Narrow,
                "64" => Precision::Wide,
                o => {
                    return Err(CollectiveError::Config(format!(
                        "SKETCHREDUCE_LANE={o:?} (32|64)"
                    )))
                }
            };
        }
        if let Some(p) = get("SKETCHREDUCE_PRECISION") {
            c.codec.precision = match p.trim().to_ascii_lowercase().as_str() {
                "auto" => Precision::Auto,
                "narrow" | "32" => Precision::Narrow,
                "wide" | "64" => Precision::Wide,
                o => {
                    return Err(CollectiveError::Config(format!(
                        "SKETCHREDUCE_PRECISION={o:?} (auto|narrow|wide)"
                    )))
                }
            };
        }
        if let Some(m) = get("SKETCHREDUCE_INNET_MODE") {
            c.codec.innet_mode = match m.trim().to_ascii_lowercase().as_str() {
                "auto" => InnetMode::Auto,
                "sketch" => InnetMode::Sketch,
                "union-rank" | "union_rank" => InnetMode::UnionRank,
                "dense" => InnetMode::Dense,
                o => {
                    return Err(CollectiveError::Config(format!(
                        "SKETCHREDUCE_INNET_MODE={o:?} (auto|sketch|union-rank|dense)"
                    )))
                }
            };
        }
        if let Some(t) = get("SKETCHREDUCE_TIMEOUT_SECS") {
            c.timeout = parse_timeout_secs("SKETCHREDUCE_TIMEOUT_SECS", &t)?;
        }
        if let Some(t) = get("SKETCHREDUCE_RENDEZVOUS_TIMEOUT_SECS") {
            c.rendezvous_timeout = parse_timeout_secs("SKETCHREDUCE_RENDEZVOUS_TIMEOUT_SECS", &t)?;
        }
        if let Some(v) = get("SKETCHREDUCE_AUTO_INNET") {
            c.auto_innet = matches!(v.trim(), "1" | "true" | "yes");
        }
        if let Some(j) = get("SKETCHREDUCE_JOB") {
            c.job_id = parse("SKETCHREDUCE_JOB", &j)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks ranges (rank < world, world ≥ 1, crossover finite, …).
    pub fn validate(&self) -> Result<()> {
        if self.world_size == 0 || self.world_size > MAX_WORLD_SIZE {
            return Err(CollectiveError::Config(format!(
                "world size {} must be in 1..={MAX_WORLD_SIZE}",
                self.world_size
            )));
        }
        if self.rank >= self.world_size {
            return Err(CollectiveError::Config(format!(
                "rank {} is not below world size {}",
                self.rank, self.world_size
            )));
        }
        for c in [self.crossover, self.crossover_rows] {
            if !(c.is_finite() && c >= 0.0) {
                return Err(CollectiveError::Config(format!(
                    "crossover {c} must be a finite, non-negative density"
                )));
            }
        }
        if self.algo == Algo::Innet && self.switch.is_none() {
            return Err(CollectiveError::Config(
                "algo innet needs a switch address (SKETCHREDUCE_SWITCH or Config::switch)".into(),
            ));
        }
        for (name, t) in [
            ("timeout", self.timeout),
            ("rendezvous timeout", self.rendezvous_timeout),
        ] {
            if t.is_zero() || t > MAX_TIMEOUT {
                return Err(CollectiveError::Config(format!(
                    "{name} {t:?} must be positive and at most {MAX_TIMEOUT:?}"
                )));
            }
        }
        Ok(())
    }

    /// The settings every rank must agree on, as `key=value` pairs in a fixed order.
    pub fn shared_settings(&self) -> String {
        format!(
            "world_size={} algo={} precision={:?} switch={} transport={} crossover={} crossover_rows={} auto_innet={} job={}",
            self.world_size,
            self.algo,
            self.codec.precision,
            self.switch
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            self.transport.name(),
            self.crossover,
            self.crossover_rows,
            self.auto_innet,
            self.job_id
        )
    }

    /// 64-bit FNV-1a hash of [`Self::shared_settings`]; compared at the rendezvous.
    pub fn fingerprint(&self) -> u64 {
        fnv1a(self.shared_settings().as_bytes())
    }
}

/// FNV-1a, 64 bit.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| CollectiveError::Config(format!("cannot resolve {host}:{port}: {e}")))?
        .find(|a| a.is_ipv4())
        .or_else(|| (host, port).to_socket_addrs().ok()?.next())
        .ok_or_else(|| CollectiveError::Config(format!("{host}:{port} resolves to nothing")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn env_parsing() {
        let m: HashMap<&str, &str> = [
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
            ("MASTER_PORT", "1234"),
            ("SKETCHREDUCE_ALGO", "allgather"),
        ]
        .into();
        let c = Config::from_lookup(|k| m.get(k).map(|s| s.to_string())).unwrap();
        assert_eq!((c.rank, c.world_size, c.master.port()), (2, 4, 1234));
        assert_eq!(c.algo, Algo::AllGather);
        let bad: HashMap<&str, &str> = [("RANK", "4"), ("WORLD_SIZE", "4")].into();
        let e = Config::from_lookup(|k| bad.get(k).map(|s| s.to_string())).unwrap_err();
        assert!(
            e.to_string().contains("rank 4 is not below world size 4"),
            "{e}"
        );
        let huge: HashMap<&str, &str> = [("RANK", "0"), ("WORLD_SIZE", "100000000000")].into();
        let e = Config::from_lookup(|k| huge.get(k).map(|s| s.to_string())).unwrap_err();
        assert!(e.to_string().contains("world size 100000000000"), "{e}");
        let missing = Config::from_lookup(|_| None).unwrap_err();
        assert!(missing.to_string().contains("RANK is not set"));
    }

    #[test]
    fn innet_mode_from_the_environment() {
        let with = |v: &str| {
            Config::from_lookup(|k| match k {
                "RANK" => Some("0".into()),
                "WORLD_SIZE" => Some("1".into()),
                "SKETCHREDUCE_INNET_MODE" => Some(v.into()),
                _ => None,
            })
        };
        for (v, want) in [
            ("auto", InnetMode::Auto),
            (" Sketch ", InnetMode::Sketch),
            ("union-rank", InnetMode::UnionRank),
            ("union_rank", InnetMode::UnionRank),
            ("DENSE", InnetMode::Dense),
        ] {
            assert_eq!(with(v).unwrap().codec.innet_mode, want, "{v:?}");
        }
        for bad in ["", "sparse", "union rank", "dense\0", &"x".repeat(100_000)] {
            let e = with(bad).unwrap_err();
            assert!(
                matches!(&e, CollectiveError::Config(m) if m.contains("SKETCHREDUCE_INNET_MODE")),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn invalid_timeouts_are_config_errors() {
        for var in [
            "SKETCHREDUCE_TIMEOUT_SECS",
            "SKETCHREDUCE_RENDEZVOUS_TIMEOUT_SECS",
        ] {
            for bad in [
                "nan", "NaN", "inf", "-inf", "-1", "0", "0.0", "-0", "1e-12", "1e300", "abc", "",
                "10s",
            ] {
                let e = Config::from_lookup(|k| match k {
                    "RANK" => Some("0".into()),
                    "WORLD_SIZE" => Some("1".into()),
                    k if k == var => Some(bad.into()),
                    _ => None,
                })
                .unwrap_err();
                assert!(
                    matches!(&e, CollectiveError::Config(m) if m.contains(var)),
                    "{var}={bad:?}: {e}"
                );
            }
        }
        let c = Config::from_lookup(|k| match k {
            "RANK" => Some("0".into()),
            "WORLD_SIZE" => Some("1".into()),
            "SKETCHREDUCE_TIMEOUT_SECS" => Some(" 2.5 ".into()),
            "SKETCHREDUCE_RENDEZVOUS_TIMEOUT_SECS" => Some("7".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.rendezvous_timeout, Duration::from_secs(7));
        let m: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let d = Config::new(0, 1, m);
        assert_eq!(
            d.timeout,
            Duration::from_secs(1800),
            "torch.distributed's default"
        );
        assert!(d.clone().with_timeout(Duration::ZERO).validate().is_err());
        assert!(d
            .with_rendezvous_timeout(MAX_TIMEOUT * 2)
            .validate()
            .is_err());
    }

    #[test]
    fn fingerprint_ignores_rank_only() {
        let m: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = Config::new(0, 4, m);
        let b = Config::new(3, 4, m).with_timeout(Duration::from_secs(1));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(
            a.fingerprint(),
            a.clone().with_algo(Algo::AllGather).fingerprint()
        );
    }
}
