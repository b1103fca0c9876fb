//! Generates the parts of the sketchreduce P4 program (bmv2 `simple_switch`, v1model) that
//! follow mechanically from the Rust wire spec, and the `simple_switch_CLI` commands that
//! configure a running switch for a job file.
//!
//! - [`generate_headers`] emits `p4/sketchreduce_gen.p4`: constants, the aggregation header
//!   type (from [`sketchreduce_wire::packet::FIELDS`]), the lanes header (`bit<32> l0..l{L-1}`)
//!   and the `SrLanes` control holding one register array per lane with the unrolled
//!   store / load / ADD / OR / MAX actions. The hand-written `p4/sketchreduce.p4` `#include`s it
//!   and holds the control flow (docs/wire.md's slot state machine).
//! - [`generate_config`] emits the control-plane commands for a static [`JobFile`] on a
//!   freshly started switch: job and rank table entries, slot and counter resets, multicast
//!   groups and nodes, the per-replica destination rewrite and the L2 forwarding entries.
//! - [`switch::Bmv2Switch`] is the live control plane of a running switch (jobs created and
//!   removed at run time, counters read back), driven through `simple_switch_CLI`
//!   ([`runtime`], whose output [`cli_output`] parses); [`portmap`] places workers on switch
//!   ports, [`program`] reads what a running switch was compiled with.
//!
//! The program is compiled for one lane count (default [`DEFAULT_LANES`]); DATA packets with
//! another lane count are dropped as `bad_lanes`, and jobs whose lane count differs from the
//! compiled one are refused.

pub mod cli_output;
pub mod commands;
pub mod control;
pub mod portmap;
pub mod program;
pub mod runtime;
pub mod switch;

use std::fmt::Write as _;

use sketchreduce_wire::job::JobError;
use sketchreduce_wire::packet::{
    Kind, Op, FIELDS, HEADER_LEN, NACK_BAD_EPOCH, NACK_UNKNOWN_JOB, VERSION,
};
use sketchreduce_wire::{
    DropReason, JobFile, DATA_PORT_MASK, DEFAULT_DATA_PORT, LANE_CHOICES, MAX_WORKERS,
};
use thiserror::Error;

use crate::portmap::{PortMap, PortMapError};

/// Lane count the committed `p4/sketchreduce_gen.p4` is generated for.
pub const DEFAULT_LANES: u16 = 64;
/// Slots in the P4 switch's pool (each slot has two sets, so registers have twice as many
/// entries).
pub const POOL_SLOTS: u32 = 1024;
/// Most jobs the P4 switch holds at once (size of the job table; multicast group ids and
/// counter ranges are allocated per job index).
pub const MAX_JOBS: usize = 64;
/// Per-job counter indices are `job_index * JOB_COUNTER_STRIDE + k`.
pub const JOB_COUNTER_STRIDE: u32 = 16;
/// Name of the generated file inside `p4/`.
pub const GENERATED_FILE: &str = "sketchreduce_gen.p4";
/// Name of the hand-written program inside `p4/`.
pub const PROGRAM_FILE: &str = "sketchreduce.p4";

/// Counter indices (besides the drop reasons, which use `DropReason as u32` in both the global
/// and the per-job arrays, `0..REASONS`).
pub mod counters {
    use sketchreduce_wire::DropReason;

    /// Number of drop reasons: indices `0..REASONS` of both counter arrays.
    pub const REASONS: u32 = DropReason::ALL.len() as u32;
    /// `SrIngress.sr_global[REASONS]`: sketchreduce datagrams received (UDP data port range).
    pub const GLOBAL_PACKETS_IN: u32 = REASONS;
    /// Size of `SrIngress.sr_global`.
    pub const GLOBAL_SIZE: u32 = 16;
    /// `SrIngress.sr_job[base + REASONS]`: DATA accepted into a slot.
    pub const JOB_DATA_IN: u32 = REASONS;
    /// `SrIngress.sr_job[base + REASONS + 1]`: slot sets completed (each multicast once).
    pub const JOB_COMPLETIONS: u32 = REASONS + 1;
    /// `SrIngress.sr_job[base + REASONS + 2]`: RESULTs unicast to a retransmitting worker.
    pub const JOB_RESULTS_UNICAST: u32 = REASONS + 2;
    /// `SrIngress.sr_job[base + REASONS + 3]`: PROBEs answered with a (non-NACK) STATUS.
    pub const JOB_PROBES: u32 = REASONS + 3;
    /// `SrEgress.sr_tx[0]`: sketchreduce datagrams sent (every RESULT replica, unicast RESULT,
    /// STATUS and NACK STATUS). `SrEgress.sr_tx_mcast[job_index]` counts a job's RESULT
    /// replicas.
    pub const TX_PACKETS_OUT: u32 = 0;

    // The layout must fit the arrays: a stride of 16 per job, 16 global counters.
    const _: () =
        assert!(JOB_PROBES < super::JOB_COUNTER_STRIDE && GLOBAL_PACKETS_IN < GLOBAL_SIZE);
}

/// Control-plane names of the program's tables, actions and registers, as bmv2 names them
/// (`<control type name>.<local name>`). The control plane uses these; a test checks they
/// exist in `p4/sketchreduce.p4`, and [`program::ProgramInfo`] that they exist in the JSON a
/// running switch reports.
pub mod names {
    /// Job table: `hdr.agg.job` (exact) → `sr_set_job`.
    pub const JOBS_TABLE: &str = "SrIngress.sr_jobs";
    /// `sr_set_job(epoch, workers, lanes, slot_base, slot_count, mcast_grp, job_index)`.
    pub const SET_JOB: &str = "SrIngress.sr_set_job";
    /// Rank table: (`hdr.agg.job`, `hdr.agg.rank`) (exact) → `sr_set_rank`.
    pub const RANKS_TABLE: &str = "SrIngress.sr_ranks";
    /// `sr_set_rank(mac, ip, udp_port, port)`: the rank's registered address and switch port.
    pub const SET_RANK: &str = "SrIngress.sr_set_rank";
    /// L2 forwarding for non-sketchreduce traffic: `hdr.ethernet.dst` (exact) → port.
    pub const L2_TABLE: &str = "SrIngress.sr_l2";
    /// `sr_l2_forward(port)`.
    pub const L2_FORWARD: &str = "SrIngress.sr_l2_forward";
    /// Egress rewrite of multicast RESULT replicas: (`egress_rid`, `egress_port`) → address.
    pub const DST_TABLE: &str = "SrEgress.sr_mcast_dst";
    /// `sr_set_dst(mac, ip, udp_port)`.
    pub const SET_DST: &str = "SrEgress.sr_set_dst";
    /// Slot set registers (index `2 * slot + set`).
    pub const REG_ROUND: &str = "SrIngress.sr_round";
    /// Workers-seen bitmap registers.
    pub const REG_BITMAP: &str = "SrIngress.sr_bitmap";
    /// Contribution count registers.
    pub const REG_COUNT: &str = "SrIngress.sr_count";
    /// Global counters (drops without a job, packets in).
    pub const CTR_GLOBAL: &str = "SrIngress.sr_global";
    /// Per-job counters.
    pub const CTR_JOB: &str = "SrIngress.sr_job";
    /// Transmit counter (egress), index 0: sketchreduce datagrams sent.
    pub const CTR_TX: &str = "SrEgress.sr_tx";
    /// RESULT replicas sent by multicast, index `job_index`.
    pub const CTR_TX_MCAST: &str = "SrEgress.sr_tx_mcast";

    /// Every table (ingress ones first).
    pub const TABLES: [&str; 4] = [JOBS_TABLE, RANKS_TABLE, L2_TABLE, DST_TABLE];
    /// Every action the control plane installs.
    pub const ACTIONS: [&str; 4] = [SET_JOB, SET_RANK, L2_FORWARD, SET_DST];
    /// Every counter array.
    pub const COUNTERS: [&str; 4] = [CTR_GLOBAL, CTR_JOB, CTR_TX, CTR_TX_MCAST];
    /// The slot state registers.
    pub const REGISTERS: [&str; 3] = [REG_ROUND, REG_BITMAP, REG_COUNT];
}

/// `SrLanes` modes (the `mode` argument of the generated control).
pub mod lane_mode {
    /// Do nothing.
    pub const NONE: u8 = 0;
    /// Registers ← packet lanes (first contribution of a round).
    pub const STORE: u8 = 1;
    /// Packet lanes ← registers (unicast of a stored result).
    pub const LOAD: u8 = 2;
    /// Registers ← registers + packet (wrapping); packet ← the new value.
    pub const ADD: u8 = 3;
    /// Registers ← registers | packet; packet ← the new value.
    pub const OR: u8 = 4;
    /// Registers ← max(registers, packet) (unsigned); packet ← the new value.
    pub const MAX: u8 = 5;
}

/// P4_16 keywords (and names v1model/core declare) a generated identifier must not use.
pub const P4_RESERVED: &[&str] = &[
    "abstract",
    "action",
    "actions",
    "apply",
    "bit",
    "bool",
    "const",
    "control",
    "default",
    "default_action",
    "else",
    "entries",
    "enum",
    "error",
    "exit",
    "extern",
    "false",
    "for",
    "header",
    "header_union",
    "if",
    "in",
    "inout",
    "int",
    "key",
    "list",
    "match_kind",
    "out",
    "package",
    "parser",
    "priority",
    "return",
    "select",
    "size",
    "state",
    "string",
    "struct",
    "switch",
    "table",
    "this",
    "transition",
    "true",
    "tuple",
    "type",
    "typedef",
    "value_set",
    "varbit",
    "verify",
    "void",
];

/// Generates `p4/sketchreduce_gen.p4` for a program compiled for `lanes` lanes per packet.
///
/// # Panics
/// If `lanes` is not one of [`LANE_CHOICES`] (callers validate user input first), or if a
/// wire field name is a P4 keyword (a defect in the wire crate, caught by the tests).
pub fn generate_headers(lanes: u16) -> String {
    assert!(
        LANE_CHOICES.contains(&lanes),
        "{lanes} lanes: the P4 program supports {LANE_CHOICES:?}"
    );
    let n = lanes as usize;
    let mut s = String::with_capacity(16 * 1024 + n * 400);
    let w = &mut s;
    let reg_size = 2 * POOL_SLOTS;
    let job_ctr = MAX_JOBS as u32 * JOB_COUNTER_STRIDE;
    let receivers = MAX_JOBS * MAX_WORKERS;

    // ---- preamble and constants -------------------------------------------------------------
    ln(w, "// GENERATED FILE, DO NOT EDIT.");
    ln(
        w,
        &format!("// Produced by `sketchreduce p4 gen --lanes {lanes}` (crate sketchreduce-p4gen)"),
    );
    ln(
        w,
        "// from the Rust wire spec (crate sketchreduce-wire, docs/wire.md). A test fails when this",
    );
    ln(
        w,
        "// file differs from the generator's output: change wire/ or p4gen/, then regenerate.",
    );
    ln(w, "//");
    ln(
        w,
        "// Included at top level by sketchreduce.p4 (after core.p4 and v1model.p4).",
    );
    ln(w, "");
    ln(w, "#ifndef SKETCHREDUCE_GEN_P4");
    ln(w, "#define SKETCHREDUCE_GEN_P4");
    ln(w, "");
    ln(
        w,
        "// Lanes per packet this program is compiled for; DATA with another count is bad_lanes.",
    );
    def(w, "SR_LANES", lanes as u64);
    def(w, "SR_POOL_SLOTS", POOL_SLOTS as u64);
    ln(
        w,
        "// Register entries: two sets per slot, index 2*slot + set.",
    );
    def(w, "SR_REG_SIZE", reg_size as u64);
    def(w, "SR_MAX_JOBS", MAX_JOBS as u64);
    def(w, "SR_MAX_WORKERS", MAX_WORKERS as u64);
    ln(
        w,
        "// Multicast receivers: one (egress_rid, egress_port) entry per job worker.",
    );
    def(w, "SR_MAX_RECEIVERS", receivers as u64);
    ln(
        w,
        "// Rank table: one (job, rank) entry per job worker (registered address, switch port).",
    );
    def(w, "SR_MAX_RANKS", receivers as u64);
    ln(w, "");
    ln(w, "// Wire constants.");
    def(w, "SR_VERSION", VERSION as u64);
    def(w, "SR_HEADER_BYTES", HEADER_LEN as u64);
    ln(
        w,
        "// UDP length of a datagram with no lanes: 8 (UDP header) + the aggregation header.",
    );
    def(w, "SR_UDP_BASE_LEN", 8 + HEADER_LEN as u64);
    hexdef(w, "SR_DATA_PORT", DEFAULT_DATA_PORT as u64, 4);
    hexdef(w, "SR_DATA_PORT_MASK", DATA_PORT_MASK as u64, 4);
    def(w, "SR_KIND_DATA", Kind::Data as u64);
    def(w, "SR_KIND_RESULT", Kind::Result as u64);
    def(w, "SR_KIND_PROBE", Kind::Probe as u64);
    def(w, "SR_KIND_STATUS", Kind::Status as u64);
    def(w, "SR_OP_ADD", Op::Add as u64);
    def(w, "SR_OP_OR", Op::Or as u64);
    def(w, "SR_OP_MAX", Op::Max as u64);
    ln(
        w,
        "// STATUS flags of a NACK (the answer to a PROBE of an unknown job or another epoch).",
    );
    let _ = writeln!(w, "#define SR_NACK_UNKNOWN_JOB 16w{NACK_UNKNOWN_JOB}");
    let _ = writeln!(w, "#define SR_NACK_BAD_EPOCH 16w{NACK_BAD_EPOCH}");
    ln(w, "");
    ln(
        w,
        "// Drop reasons: indices into the global and per-job counter arrays (DropReason).",
    );
    ln(
        w,
        "// Counter indices are typed bit<32> literals: counter.count() takes a bit<32> index.",
    );
    for r in DropReason::ALL {
        def32(
            w,
            &format!("SR_DROP_{}", r.name().to_ascii_uppercase()),
            r as u64,
        );
    }
    def(w, "SR_DROP_REASONS", DropReason::ALL.len() as u64);
    ln(w, "");
    ln(w, "// Counter layout (see p4/README.md).");
    def(w, "SR_GLOBAL_CTR_SIZE", counters::GLOBAL_SIZE as u64);
    def32(w, "SR_G_PACKETS_IN", counters::GLOBAL_PACKETS_IN as u64);
    def(w, "SR_JOB_CTR_STRIDE", JOB_COUNTER_STRIDE as u64);
    def(w, "SR_JOB_CTR_SIZE", job_ctr as u64);
    def32(w, "SR_JC_DATA_IN", counters::JOB_DATA_IN as u64);
    def32(w, "SR_JC_COMPLETIONS", counters::JOB_COMPLETIONS as u64);
    def32(
        w,
        "SR_JC_RESULTS_UNICAST",
        counters::JOB_RESULTS_UNICAST as u64,
    );
    def32(w, "SR_JC_PROBES", counters::JOB_PROBES as u64);
    def32(w, "SR_TX_PACKETS_OUT", counters::TX_PACKETS_OUT as u64);
    ln(w, "");
    ln(w, "// SrLanes modes.");
    def(w, "SR_LM_NONE", lane_mode::NONE as u64);
    def(w, "SR_LM_STORE", lane_mode::STORE as u64);
    def(w, "SR_LM_LOAD", lane_mode::LOAD as u64);
    def(w, "SR_LM_ADD", lane_mode::ADD as u64);
    def(w, "SR_LM_OR", lane_mode::OR as u64);
    def(w, "SR_LM_MAX", lane_mode::MAX as u64);
    ln(w, "");

    // ---- aggregation header -----------------------------------------------------------------
    ln(
        w,
        &format!("// The aggregation header, {HEADER_LEN} bytes, fields in wire order."),
    );
    ln(w, "header sr_agg_t {");
    for (name, bits) in FIELDS {
        assert!(
            !P4_RESERVED.contains(&name),
            "wire field `{name}` is a P4 keyword"
        );
        ln(w, &format!("    bit<{bits}> {name};"));
    }
    ln(w, "}");
    ln(w, "");

    // ---- lanes header -----------------------------------------------------------------------
    ln(
        w,
        &format!("// The lanes: {lanes} big-endian 32-bit words after the aggregation header."),
    );
    ln(w, "header sr_lanes_t {");
    for i in 0..n {
        ln(w, &format!("    bit<32> l{i};"));
    }
    ln(w, "}");
    ln(w, "");

    // ---- SrLanes ----------------------------------------------------------------------------
    ln(
        w,
        "// One register array per lane (index 2*slot + set) and the unrolled lane operations.",
    );
    ln(
        w,
        "// `lanes` is the packet's lanes header; after ADD/OR/MAX it holds the new stored values,",
    );
    ln(
        w,
        "// so a completing packet already carries the result. Register accesses only in actions,",
    );
    ln(w, "// conditionals only in the apply block.");
    ln(
        w,
        "control SrLanes(inout sr_lanes_t lanes, in bit<32> idx, in bit<8> mode) {",
    );
    for i in 0..n {
        ln(
            w,
            &format!("    register<bit<32>>(SR_REG_SIZE) sr_lane_{i};"),
        );
    }
    ln(w, "");
    for i in 0..n {
        ln(w, &format!("    bit<32> s{i};"));
    }
    ln(w, "");
    action(w, "sr_lanes_store", n, |i| {
        format!("sr_lane_{i}.write(idx, lanes.l{i});")
    });
    action(w, "sr_lanes_load", n, |i| {
        format!("sr_lane_{i}.read(lanes.l{i}, idx);")
    });
    action(w, "sr_lanes_fetch", n, |i| {
        format!("sr_lane_{i}.read(s{i}, idx);")
    });
    action(w, "sr_lanes_add", n, |i| {
        format!("lanes.l{i} = lanes.l{i} + s{i};")
    });
    action(w, "sr_lanes_or", n, |i| {
        format!("lanes.l{i} = lanes.l{i} | s{i};")
    });
    ln(w, "    apply {");
    ln(w, "        if (mode == SR_LM_STORE) {");
    ln(w, "            sr_lanes_store();");
    ln(w, "        } else if (mode == SR_LM_LOAD) {");
    ln(w, "            sr_lanes_load();");
    ln(w, "        } else if (mode == SR_LM_ADD) {");
    ln(w, "            sr_lanes_fetch();");
    ln(w, "            sr_lanes_add();");
    ln(w, "            sr_lanes_store();");
    ln(w, "        } else if (mode == SR_LM_OR) {");
    ln(w, "            sr_lanes_fetch();");
    ln(w, "            sr_lanes_or();");
    ln(w, "            sr_lanes_store();");
    ln(w, "        } else if (mode == SR_LM_MAX) {");
    ln(w, "            sr_lanes_fetch();");
    for i in 0..n {
        ln(
            w,
            &format!("            if (s{i} > lanes.l{i}) {{ lanes.l{i} = s{i}; }}"),
        );
    }
    ln(w, "            sr_lanes_store();");
    ln(w, "        }");
    ln(w, "    }");
    ln(w, "}");
    ln(w, "");
    ln(w, "#endif  // SKETCHREDUCE_GEN_P4");
    s
}

fn ln(w: &mut String, line: &str) {
    w.push_str(line);
    w.push('\n');
}

fn def(w: &mut String, name: &str, v: u64) {
    let _ = writeln!(w, "#define {name} {v}");
}

fn def32(w: &mut String, name: &str, v: u64) {
    let _ = writeln!(w, "#define {name} 32w{v}");
}

fn hexdef(w: &mut String, name: &str, v: u64, digits: usize) {
    let _ = writeln!(w, "#define {name} 0x{v:0digits$X}");
}

fn action(w: &mut String, name: &str, n: usize, body: impl Fn(usize) -> String) {
    let _ = writeln!(w, "    action {name}() {{");
    for i in 0..n {
        let _ = writeln!(w, "        {}", body(i));
    }
    ln(w, "    }");
    ln(w, "");
}

/// What the config generator needs to know about the compiled program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigOptions {
    /// Lane count the program was generated for (`sketchreduce p4 gen --lanes`).
    pub lanes: u16,
    /// Slots in the program's pool ([`POOL_SLOTS`]).
    pub pool_slots: u32,
}

impl Default for ConfigOptions {
    fn default() -> Self {
        ConfigOptions {
            lanes: DEFAULT_LANES,
            pool_slots: POOL_SLOTS,
        }
    }
}

/// Why a job file cannot be turned into a bmv2 configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The job file lists no job.
    #[error("the job file has no jobs")]
    NoJobs,
    /// More jobs than the program's tables hold.
    #[error("{0} jobs; the P4 program holds at most {MAX_JOBS}")]
    TooManyJobs(usize),
    /// A job violates the wire limits or the pool size.
    #[error(transparent)]
    Invalid(#[from] JobError),
    /// Two jobs share an id.
    #[error("job {0} appears twice")]
    DuplicateJob(u16),
    /// Two jobs' slot ranges overlap.
    #[error("jobs {0} and {1} have overlapping slot ranges")]
    Overlap(u16, u16),
    /// The program is compiled for another lane count.
    #[error(
        "job {job} uses {lanes} lanes but the P4 program is generated for {compiled} \
         (regenerate with `sketchreduce p4 gen --lanes {lanes}`, recompile, and pass --lanes {lanes})"
    )]
    LanesMismatch {
        /// Job id.
        job: u16,
        /// The job's lanes.
        lanes: u16,
        /// The program's lanes.
        compiled: u16,
    },
    /// A worker cannot be placed: no `mac`/`port`, or unusable values. The P4 switch needs
    /// each worker's MAC (the replies' destination) and switch port (multicast group and
    /// source check).
    #[error(transparent)]
    Place(#[from] PortMapError),
    /// The same MAC is attached to two different switch ports.
    #[error("MAC {mac} is given both port {a} and port {b}")]
    MacConflict {
        /// The MAC address.
        mac: String,
        /// One port.
        a: u16,
        /// The other port.
        b: u16,
    },
    /// The lane count is not one the wire format allows.
    #[error("{0} lanes: allowed {LANE_CHOICES:?}")]
    UnsupportedLanes(u16),
}

/// Largest bmv2 port number usable for a worker (ports are 9 bits; 511 is the drop port).
pub const MAX_PORT: u16 = 510;

/// Multicast group id of the job at `job_index`.
pub fn mcast_group(job_index: usize) -> u16 {
    job_index as u16 + 1
}

/// Replication id of worker `rank` of the job at `job_index`: unique per (job, worker), so the
/// egress rewrite can tell the replicas apart even when workers share a switch port.
pub fn replication_id(job_index: usize, rank: usize) -> u16 {
    (1 + job_index * MAX_WORKERS + rank) as u16
}

/// Parses `aa:bb:cc:dd:ee:ff` into the canonical lower-case form.
pub fn parse_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = Vec::with_capacity(6);
    for p in parts {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        out.push(u8::from_str_radix(p, 16).ok()?);
    }
    Some(
        out.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Generates the `simple_switch_CLI` commands that configure a **freshly started** switch
/// running the program (compiled as described by `opts`) for the static jobs of `jobs`, each
/// with the epoch its job file gives. `sketchreduce p4 control --jobs FILE` does the same on a
/// running switch (reading handles back instead of assuming them) and also serves the control
/// protocol; this is the offline variant.
///
/// Per job, in file order (`job_index` = position): the `register_write`s and
/// `counter_write`s that zero its slots and counters, the multicast group (`mc_mgrp_create`,
/// one `mc_node_create` per worker with replication id [`replication_id`] on the worker's
/// port, `mc_node_associate`), the egress destination rewrite per replica, the rank table
/// entries, and finally the job table entry. Then one L2 forwarding entry per distinct worker
/// MAC.
///
/// Multicast node handles are assumed to be allocated 0, 1, 2, … in creation order, which holds
/// for a switch whose multicast state is empty (freshly started).
pub fn generate_config(jobs: &JobFile, opts: &ConfigOptions) -> Result<String, ConfigError> {
    if !LANE_CHOICES.contains(&opts.lanes) {
        return Err(ConfigError::UnsupportedLanes(opts.lanes));
    }
    if jobs.jobs.is_empty() {
        return Err(ConfigError::NoJobs);
    }
    if jobs.jobs.len() > MAX_JOBS {
        return Err(ConfigError::TooManyJobs(jobs.jobs.len()));
    }
    let no_map = PortMap::default();
    let mut all = Vec::with_capacity(jobs.jobs.len());
    for (i, job) in jobs.jobs.iter().enumerate() {
        if job.lanes != opts.lanes {
            return Err(ConfigError::LanesMismatch {
                job: job.id,
                lanes: job.lanes,
                compiled: opts.lanes,
            });
        }
        job.validate(opts.pool_slots, opts.lanes)?;
        job.check_epoch()?;
        for other in &jobs.jobs[..i] {
            if other.id == job.id {
                return Err(ConfigError::DuplicateJob(job.id));
            }
            if other.overlaps(job) {
                return Err(ConfigError::Overlap(other.id, job.id));
            }
        }
        all.push(no_map.place(job)?);
    }

    let mut out: Vec<String> = Vec::new();
    let mut node_handle = 0u32;
    let mut l2: Vec<(String, u16)> = Vec::new();
    for (ji, (job, placed)) in jobs.jobs.iter().zip(&all).enumerate() {
        // Reset first, so no packet sees a half-reset job.
        out.extend(commands::slot_resets(job.slot_base, job.slot_count));
        out.extend(commands::counter_resets(ji as u32));
        let grp = mcast_group(ji);
        out.push(format!("mc_mgrp_create {grp}"));
        for (rank, p) in placed.iter().enumerate() {
            out.push(format!(
                "mc_node_create {} {}",
                replication_id(ji, rank),
                p.port
            ));
            out.push(format!("mc_node_associate {grp} {node_handle}"));
            node_handle += 1;
        }
        for (rank, p) in placed.iter().enumerate() {
            out.push(commands::dst_add(replication_id(ji, rank), p));
            match l2.iter().find(|(m, _)| *m == p.mac) {
                Some((_, port)) if *port != p.port => {
                    return Err(ConfigError::MacConflict {
                        mac: p.mac.clone(),
                        a: *port,
                        b: p.port,
                    })
                }
                Some(_) => {}
                None => l2.push((p.mac.clone(), p.port)),
            }
        }
        for (rank, p) in placed.iter().enumerate() {
            out.push(commands::rank_add(job.id, rank, p));
        }
        out.push(commands::job_add(&commands::JobEntry {
            id: job.id,
            epoch: job.epoch,
            workers: job.workers.len() as u8,
            lanes: job.lanes,
            slot_base: job.slot_base,
            slot_count: job.slot_count,
            mcast_group: grp,
            job_index: ji as u32,
        }));
    }
    for (mac, port) in &l2 {
        out.push(commands::l2_add(mac, *port));
    }
    let mut text = out.join("\n");
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_fill_32_bytes() {
        let bits: usize = FIELDS.iter().map(|(_, b)| b).sum();
        assert_eq!(bits, HEADER_LEN * 8);
        for (name, _) in FIELDS {
            assert!(!P4_RESERVED.contains(&name), "{name} is reserved in P4");
        }
    }

    #[test]
    fn every_lane_count_generates() {
        for l in LANE_CHOICES {
            let g = generate_headers(l);
            assert!(g.contains(&format!("#define SR_LANES {l}\n")));
            assert!(g.contains(&format!("    bit<32> l{};\n", l - 1)));
            assert!(!g.contains(&format!("    bit<32> l{l};\n")));
            assert_eq!(
                g.matches("register<bit<32>>(SR_REG_SIZE)").count(),
                l as usize
            );
            assert_eq!(g.matches('{').count(), g.matches('}').count());
        }
    }

    #[test]
    fn drop_reason_defines_match_the_wire_enum() {
        let g = generate_headers(32);
        assert!(g.contains("#define SR_DROP_MALFORMED 32w0\n"));
        assert!(g.contains("#define SR_DROP_BAD_LANES 32w5\n"));
        assert!(g.contains("#define SR_DROP_STALE 32w8\n"));
        assert!(g.contains("#define SR_DATA_PORT 0x9A00\n"));
        assert!(g.contains("#define SR_DATA_PORT_MASK 0xFFF0\n"));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:0A:00:00:01").as_deref(),
            Some("02:00:0a:00:00:01")
        );
        assert_eq!(parse_mac("02:00:0a:00:00").as_deref(), None);
        assert_eq!(parse_mac("02:00:0a:00:00:100").as_deref(), None);
        assert_eq!(parse_mac("zz:00:0a:00:00:01").as_deref(), None);
    }

    #[test]
    fn ids_are_unique_and_fit() {
        let max = replication_id(MAX_JOBS - 1, MAX_WORKERS - 1);
        assert_eq!(max as usize, MAX_JOBS * MAX_WORKERS);
        assert!(replication_id(0, 0) > 0, "rid 0 means 'not a replica'");
        assert_eq!(mcast_group(0), 1, "group 0 means 'no multicast'");
    }
}
