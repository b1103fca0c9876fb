//! The `simple_switch_CLI` command lines that configure the program, one builder per kind of
//! entry, shared by the static configuration ([`crate::generate_config`]) and the live control
//! plane ([`crate::switch::Bmv2Switch`]).
//!
//! Numbers are written in decimal, MACs as `aa:bb:cc:dd:ee:ff` and IPv4 addresses dotted: the
//! forms `runtime_CLI.py`'s `parse_param` accepts for 48- and 32-bit parameters.

use crate::portmap::Placement;
use crate::{counters, names, JOB_COUNTER_STRIDE};

/// The job table entry's action data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobEntry {
    /// Job id (the key).
    pub id: u16,
    /// The job's epoch.
    pub epoch: u32,
    /// Number of workers.
    pub workers: u8,
    /// Lanes per packet.
    pub lanes: u16,
    /// First slot.
    pub slot_base: u32,
    /// Number of slots.
    pub slot_count: u32,
    /// Multicast group of its RESULTs.
    pub mcast_group: u16,
    /// Index of its counters ([`JOB_COUNTER_STRIDE`] per job) and of `sr_tx_mcast`.
    pub job_index: u32,
}

impl JobEntry {
    fn action_data(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.epoch,
            self.workers,
            self.lanes,
            self.slot_base,
            self.slot_count,
            self.mcast_group,
            self.job_index
        )
    }
}

/// `table_add` of the job entry (the job becomes visible to packets).
pub fn job_add(e: &JobEntry) -> String {
    format!(
        "table_add {} {} {} => {}",
        names::JOBS_TABLE,
        names::SET_JOB,
        e.id,
        e.action_data()
    )
}

/// `table_modify` of an existing job entry (new epoch or parameters, atomically).
pub fn job_modify(handle: u64, e: &JobEntry) -> String {
    format!(
        "table_modify {} {} {handle} => {}",
        names::JOBS_TABLE,
        names::SET_JOB,
        e.action_data()
    )
}

/// `table_add` of a rank's registered address and switch port.
pub fn rank_add(job: u16, rank: usize, p: &Placement) -> String {
    format!(
        "table_add {} {} {job} {rank} => {} {} {} {}",
        names::RANKS_TABLE,
        names::SET_RANK,
        p.mac,
        p.ip,
        p.udp_port,
        p.port
    )
}

/// `table_add` of the egress rewrite of the multicast replica with replication id `rid`.
pub fn dst_add(rid: u16, p: &Placement) -> String {
    format!(
        "table_add {} {} {rid} {} => {} {} {}",
        names::DST_TABLE,
        names::SET_DST,
        p.port,
        p.mac,
        p.ip,
        p.udp_port
    )
}

/// `table_add` of an L2 forwarding entry.
pub fn l2_add(mac: &str, port: u16) -> String {
    format!(
        "table_add {} {} {mac} => {port}",
        names::L2_TABLE,
        names::L2_FORWARD
    )
}

/// `table_delete` of an entry.
pub fn table_delete(table: &str, handle: u64) -> String {
    format!("table_delete {table} {handle}")
}

/// The `register_write`s that zero `round`, `bitmap` and `count` of both sets of every slot
/// in `[slot_base, slot_base + slot_count)` (docs/wire.md: creating a job resets its slots).
pub fn slot_resets(slot_base: u32, slot_count: u32) -> Vec<String> {
    let mut out = Vec::with_capacity(6 * slot_count as usize);
    for reg in [names::REG_ROUND, names::REG_BITMAP, names::REG_COUNT] {
        for slot in slot_base..slot_base.saturating_add(slot_count) {
            for set in 0..2u64 {
                out.push(format!("register_write {reg} {} 0", 2 * slot as u64 + set));
            }
        }
    }
    out
}

/// The `counter_write`s that zero the counters of job index `job_index` (a new job starts
/// from 0 even when its index was used before).
pub fn counter_resets(job_index: u32) -> Vec<String> {
    let base = job_index * JOB_COUNTER_STRIDE;
    let mut out: Vec<String> = (base..base + JOB_COUNTER_STRIDE)
        .map(|i| format!("counter_write {} {i} 0 0", names::CTR_JOB))
        .collect();
    out.push(format!(
        "counter_write {} {job_index} 0 0",
        names::CTR_TX_MCAST
    ));
    out
}

/// `counter_read`s of the global counters: drops `0..reasons`, then packets in, then packets
/// out (in this order; [`crate::switch`] parses them back in the same order).
pub fn global_counter_reads(reasons: usize) -> Vec<String> {
    let mut out: Vec<String> = (0..reasons)
        .map(|r| format!("counter_read {} {r}", names::CTR_GLOBAL))
        .collect();
    out.push(format!(
        "counter_read {} {}",
        names::CTR_GLOBAL,
        counters::GLOBAL_PACKETS_IN
    ));
    out.push(format!(
        "counter_read {} {}",
        names::CTR_TX,
        counters::TX_PACKETS_OUT
    ));
    out
}

/// `counter_read`s of one job's counters: drops `0..reasons`, data in, completions, results
/// unicast, probes, then its multicast replicas.
pub fn job_counter_reads(job_index: u32, reasons: usize) -> Vec<String> {
    let base = job_index * JOB_COUNTER_STRIDE;
    let mut out: Vec<String> = (0..reasons as u32)
        .chain([
            counters::JOB_DATA_IN,
            counters::JOB_COMPLETIONS,
            counters::JOB_RESULTS_UNICAST,
            counters::JOB_PROBES,
        ])
        .map(|k| format!("counter_read {} {}", names::CTR_JOB, base + k))
        .collect();
    out.push(format!("counter_read {} {job_index}", names::CTR_TX_MCAST));
    out
}
