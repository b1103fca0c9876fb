//! The live bmv2 control plane: jobs created, replaced and removed on a running
//! `simple_switch` through its CLI ([`Runtime`]), and its counters read back.
//!
//! Per job (index `i` among the installed jobs, `0..MAX_JOBS`) the switch holds:
//! - the job table entry (epoch, workers, lanes, slot range, multicast group `i + 1`, index);
//! - one rank table entry per worker: its registered MAC, IPv4 address, UDP port and switch
//!   port (the source check, and the destination of STATUS and unicast RESULTs);
//! - multicast group `i + 1` with one node per worker (replication id
//!   [`crate::replication_id`]`(i, rank)` on the worker's port), and per node an egress
//!   rewrite entry (the replica's destination);
//! - zeroed slot registers (both sets of every slot in its range) and zeroed counters.
//!
//! Entry and node handles are taken from the CLI's replies, never assumed. A job becomes
//! visible to packets when its job entry is added, after everything else; it disappears when
//! that entry is deleted, before everything else.

use std::collections::BTreeMap;

use sketchreduce_wire::{Counters, DropReason, JobCounters, JobSpec};
use thiserror::Error;

use crate::cli_output::{self, CliError};
use crate::commands::{self, JobEntry};
use crate::portmap::{Placement, PortMap, PortMapError};
use crate::program::{ProgramError, ProgramInfo};
use crate::runtime::Runtime;
use crate::{mcast_group, names, replication_id, MAX_JOBS};

/// Why the switch refused or failed an operation.
#[derive(Debug, Error)]
pub enum Bmv2Error {
    /// The CLI failed or reported an error.
    #[error(transparent)]
    Cli(#[from] CliError),
    /// The switch runs something else than this version of the program.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// A worker cannot be placed on a switch port.
    #[error(transparent)]
    Place(#[from] PortMapError),
    /// The job does not fit this switch (lanes, slots, MAC on two ports, …).
    #[error("{0}")]
    Invalid(String),
    /// Every job index is in use.
    #[error("the P4 switch holds at most {MAX_JOBS} jobs")]
    Full,
    /// No such job is installed.
    #[error("no job {0} on the switch")]
    UnknownJob(u16),
    /// The job's slots overlap another job's.
    #[error("job {job}: slots overlap job {other}")]
    Overlap {
        /// The job being created.
        job: u16,
        /// The installed job it collides with.
        other: u16,
    },
}

/// What is installed for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    entry: JobEntry,
    placements: Vec<Placement>,
    /// Handle of the job table entry (None until added).
    job_handle: Option<u64>,
    rank_handles: Vec<u64>,
    dst_handles: Vec<u64>,
    nodes: Vec<u64>,
    /// Nodes associated with the group.
    associated: Vec<u64>,
    group: bool,
}

impl Installed {
    fn new(entry: JobEntry, placements: Vec<Placement>) -> Self {
        Installed {
            entry,
            placements,
            job_handle: None,
            rank_handles: Vec::new(),
            dst_handles: Vec::new(),
            nodes: Vec::new(),
            associated: Vec::new(),
            group: false,
        }
    }
}

/// A running `simple_switch` driven through `R`.
pub struct Bmv2Switch<R: Runtime> {
    rt: R,
    program: ProgramInfo,
    ports: PortMap,
    jobs: BTreeMap<u16, Installed>,
    /// Installed L2 forwarding entries: MAC → port.
    l2: BTreeMap<String, u16>,
}

impl<R: Runtime> std::fmt::Debug for Bmv2Switch<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bmv2Switch")
            .field("program", &self.program)
            .field("jobs", &self.jobs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Bmv2Switch<R> {
    /// Takes over the switch behind `rt`: clears its state (`reset_state`: tables, registers,
    /// counters, multicast groups), reads its program (`write_config_to_file`) and installs an
    /// L2 forwarding entry for every host of the port map.
    pub fn connect(mut rt: R, ports: PortMap) -> Result<Self, Bmv2Error> {
        let dir = std::env::temp_dir().join(format!(
            "sketchreduce-p4-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::Process(format!("creating {}: {e}", dir.display())))?;
        let json_path = dir.join("program.json");
        let mut cmds = vec![
            "reset_state".to_string(),
            format!("write_config_to_file {}", json_path.display()),
        ];
        // reset_state clears these too; reset them explicitly all the same, so a switch whose
        // reset leaves counters or registers behind still starts from zero.
        for c in [
            names::CTR_GLOBAL,
            names::CTR_JOB,
            names::CTR_TX,
            names::CTR_TX_MCAST,
        ] {
            cmds.push(format!("counter_reset {c}"));
        }
        for r in names::REGISTERS {
            cmds.push(format!("register_reset {r}"));
        }
        let res = rt.run(&cmds);
        let json = std::fs::read_to_string(&json_path);
        let _ = std::fs::remove_dir_all(&dir);
        res?;
        let json = json.map_err(|e| {
            CliError::Process(format!("write_config_to_file wrote nothing readable: {e}"))
        })?;
        let program = ProgramInfo::from_json(&json)?;
        let mut sw = Bmv2Switch {
            rt,
            program,
            ports,
            jobs: BTreeMap::new(),
            l2: BTreeMap::new(),
        };
        let hosts: Vec<(String, u16)> = sw
            .ports
            .hosts
            .iter()
            .map(|h| (h.mac.clone(), h.port))
            .collect();
        sw.add_l2(&hosts)?;
        Ok(sw)
    }

    /// The program the switch runs.
    pub fn program(&self) -> ProgramInfo {
        self.program
    }

    /// The port map.
    pub fn ports(&self) -> &PortMap {
        &self.ports
    }

    /// Ids of the installed jobs.
    pub fn job_ids(&self) -> Vec<u16> {
        self.jobs.keys().copied().collect()
    }

    fn add_l2(&mut self, entries: &[(String, u16)]) -> Result<(), Bmv2Error> {
        let new: Vec<(String, u16)> = entries
            .iter()
            .filter(|(m, _)| !self.l2.contains_key(m))
            .cloned()
            .collect();
        let cmds: Vec<String> = new.iter().map(|(m, p)| commands::l2_add(m, *p)).collect();
        let outs = self.rt.run_all(&cmds)?;
        let mut first_err = None;
        for ((mac, port), (c, o)) in new.into_iter().zip(cmds.iter().zip(outs)) {
            match o.and_then(|o| cli_output::entry_handle(c, &o)) {
                Ok(_) => {
                    self.l2.insert(mac, port);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Checks `spec` against the program and the installed jobs and places its workers.
    fn plan(&self, spec: &JobSpec) -> Result<Vec<Placement>, Bmv2Error> {
        if spec.lanes != self.program.lanes {
            return Err(Bmv2Error::Invalid(format!(
                "job {}: {} lanes, but the P4 program is compiled for exactly {} \
                 (SR_LANES; regenerate and recompile it for another lane count)",
                spec.id, spec.lanes, self.program.lanes
            )));
        }
        spec.validate(self.program.pool_slots, self.program.lanes)
            .and_then(|()| spec.check_epoch())
            .map_err(|e| Bmv2Error::Invalid(e.to_string()))?;
        if let Some(other) = self
            .jobs
            .iter()
            .find(|(id, j)| {
                **id != spec.id && {
                    let (b, c) = (j.entry.slot_base, j.entry.slot_count);
                    spec.slot_base < b + c && b < spec.slot_base + spec.slot_count
                }
            })
            .map(|(id, _)| *id)
        {
            return Err(Bmv2Error::Overlap {
                job: spec.id,
                other,
            });
        }
        let placements = self.ports.place(spec)?;
        for p in &placements {
            if let Some(port) = self.l2.get(&p.mac).filter(|port| **port != p.port) {
                return Err(Bmv2Error::Invalid(format!(
                    "job {}: MAC {} is on switch port {port}, not {}",
                    spec.id, p.mac, p.port
                )));
            }
        }
        Ok(placements)
    }

    /// Creates job `spec` under its epoch, or replaces the installed job with the same id: the
    /// old job's packets become `bad_epoch` at once, its entries are replaced and its slots
    /// and counters reset. On failure nothing of the new job remains installed (for a
    /// replacement, neither does the old job).
    pub fn install(&mut self, spec: &JobSpec) -> Result<(), Bmv2Error> {
        let placements = self.plan(spec)?;
        let epoch = spec.epoch;
        let index = match self.jobs.get(&spec.id) {
            Some(old) => old.entry.job_index,
            None => (0..MAX_JOBS as u32)
                .find(|i| self.jobs.values().all(|j| j.entry.job_index != *i))
                .ok_or(Bmv2Error::Full)?,
        };
        let entry = JobEntry {
            id: spec.id,
            epoch,
            workers: spec.workers.len() as u8,
            lanes: spec.lanes,
            slot_base: spec.slot_base,
            slot_count: spec.slot_count,
            mcast_group: mcast_group(index as usize),
            job_index: index,
        };
        let macs: Vec<(String, u16)> = placements.iter().map(|p| (p.mac.clone(), p.port)).collect();
        let mut job = Installed::new(entry, placements);
        if let Some(mut old) = self.jobs.remove(&spec.id) {
            // Switch the visible job to the new epoch first: from now on the old workers'
            // packets are bad_epoch, and nobody knows the new epoch until we answer.
            let handle = old.job_handle.take();
            let retire = handle.map(|h| commands::job_modify(h, &JobEntry { epoch, ..old.entry }));
            if let Some(c) = retire {
                if let Err(e) = self.rt.run(&[c]) {
                    old.job_handle = handle;
                    let _ = self.teardown(&old);
                    return Err(e.into());
                }
            }
            job.job_handle = handle;
            if let Err(e) = self.teardown(&old) {
                let _ = self.teardown(&job);
                return Err(e);
            }
        }
        let r = self.add_l2(&macs).and_then(|()| self.build(&mut job));
        match r {
            Ok(()) => {
                self.jobs.insert(spec.id, job);
                Ok(())
            }
            Err(e) => {
                let _ = self.teardown(&job);
                Err(e)
            }
        }
    }

    /// Installs everything of `job` (its job entry last, or modified last when `job_handle`
    /// is set), recording handles as they come so that a failure can be undone.
    fn build(&mut self, job: &mut Installed) -> Result<(), Bmv2Error> {
        let e = job.entry;
        let n = job.placements.len();
        // 1. Resets, multicast group and nodes.
        let mut cmds = commands::slot_resets(e.slot_base, e.slot_count);
        cmds.extend(commands::counter_resets(e.job_index));
        let group_at = cmds.len();
        cmds.push(format!("mc_mgrp_create {}", e.mcast_group));
        for (rank, p) in job.placements.iter().enumerate() {
            cmds.push(format!(
                "mc_node_create {} {}",
                replication_id(e.job_index as usize, rank),
                p.port
            ));
        }
        let outs = self.rt.run_all(&cmds)?;
        let mut first_err: Option<CliError> = None;
        for (i, (c, o)) in cmds.iter().zip(outs).enumerate() {
            let o = match o {
                Ok(o) => o,
                Err(err) => {
                    first_err.get_or_insert(err);
                    continue;
                }
            };
            if i == group_at {
                job.group = true;
            } else if i > group_at {
                match cli_output::node_handle(c, &o) {
                    Ok(h) => job.nodes.push(h),
                    Err(err) => {
                        first_err.get_or_insert(err);
                    }
                }
            }
        }
        if let Some(err) = first_err {
            return Err(err.into());
        }
        // 2. Associations, egress rewrites, ranks, and the job entry.
        let mut cmds: Vec<String> = job
            .nodes
            .iter()
            .map(|h| format!("mc_node_associate {} {h}", e.mcast_group))
            .collect();
        for (rank, p) in job.placements.iter().enumerate() {
            cmds.push(commands::dst_add(
                replication_id(e.job_index as usize, rank),
                p,
            ));
        }
        for (rank, p) in job.placements.iter().enumerate() {
            cmds.push(commands::rank_add(e.id, rank, p));
        }
        cmds.push(match job.job_handle {
            Some(h) => commands::job_modify(h, &e),
            None => commands::job_add(&e),
        });
        let outs = self.rt.run_all(&cmds)?;
        let mut first_err: Option<CliError> = None;
        for (i, (c, o)) in cmds.iter().zip(outs).enumerate() {
            let modify = i == 3 * n && job.job_handle.is_some();
            let handle = o.and_then(|o| {
                if i < n || modify {
                    Ok(None)
                } else {
                    cli_output::entry_handle(c, &o).map(Some)
                }
            });
            match handle {
                Ok(None) if i < n => job.associated.push(job.nodes[i]),
                Ok(Some(h)) if i < 2 * n => job.dst_handles.push(h),
                Ok(Some(h)) if i < 3 * n => job.rank_handles.push(h),
                Ok(Some(h)) => job.job_handle = Some(h),
                Ok(None) => {}
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        match first_err {
            Some(err) => Err(err.into()),
            None => Ok(()),
        }
    }

    /// Removes everything of `job` that is installed, job entry first. Goes on after errors
    /// (the first is returned).
    fn teardown(&mut self, job: &Installed) -> Result<(), Bmv2Error> {
        let mut cmds: Vec<String> = Vec::new();
        if let Some(h) = job.job_handle {
            cmds.push(commands::table_delete(names::JOBS_TABLE, h));
        }
        for h in &job.rank_handles {
            cmds.push(commands::table_delete(names::RANKS_TABLE, *h));
        }
        for h in &job.dst_handles {
            cmds.push(commands::table_delete(names::DST_TABLE, *h));
        }
        for h in &job.associated {
            cmds.push(format!("mc_node_dissociate {} {h}", job.entry.mcast_group));
        }
        for h in &job.nodes {
            cmds.push(format!("mc_node_destroy {h}"));
        }
        if job.group {
            cmds.push(format!("mc_mgrp_destroy {}", job.entry.mcast_group));
        }
        if cmds.is_empty() {
            return Ok(());
        }
        let outs = self.rt.run_all(&cmds)?;
        match outs.into_iter().find_map(Result::err) {
            Some(e) => Err(Bmv2Error::Cli(e)),
            None => Ok(()),
        }
    }

    /// Removes job `id` from the switch. The job is forgotten even if some command failed
    /// (the error says so; restarting the control plane resets the switch).
    pub fn remove(&mut self, id: u16) -> Result<(), Bmv2Error> {
        let job = self.jobs.remove(&id).ok_or(Bmv2Error::UnknownJob(id))?;
        self.teardown(&job)
    }

    /// Reads every counter: the global ones and those of each installed job.
    pub fn counters(&mut self) -> Result<Counters, Bmv2Error> {
        let reasons = DropReason::ALL.len();
        let mut cmds = commands::global_counter_reads(reasons);
        let jobs: Vec<(u16, u32)> = self
            .jobs
            .iter()
            .map(|(id, j)| (*id, j.entry.job_index))
            .collect();
        for (_, index) in &jobs {
            cmds.extend(commands::job_counter_reads(*index, reasons));
        }
        let outs = self.rt.run(&cmds)?;
        let values = cmds
            .iter()
            .zip(&outs)
            .map(|(c, o)| cli_output::counter(c, o).map(|v| v.packets))
            .collect::<Result<Vec<u64>, CliError>>()?;
        let mut it = values.into_iter();
        let mut next = || it.next().unwrap_or(0);
        let mut c = Counters::default();
        for d in c.drops.iter_mut() {
            *d = next();
        }
        c.packets_in = next();
        c.packets_out = next();
        for (id, _) in jobs {
            let mut j = JobCounters::default();
            for d in j.drops.iter_mut() {
                *d = next();
            }
            j.data_in = next();
            j.completions = next();
            j.results_unicast = next();
            j.probes = next();
            j.results_multicast = next();
            c.jobs.push((id, j));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use crate::program::tests::FIXTURE;

    /// What the fake switch holds.
    #[derive(Debug, Default)]
    struct State {
        /// (table, handle) → the command's key and action text.
        entries: BTreeMap<(String, u64), String>,
        next_handle: u64,
        groups: BTreeMap<u64, BTreeSet<u64>>,
        nodes: BTreeMap<u64, (u64, u64)>,
        next_node: u64,
        counters: BTreeMap<(String, u64), u64>,
        /// Commands starting with this fail as bmv2 would report it.
        fail: Option<String>,
        log: Vec<String>,
    }

    /// An in-process stand-in for simple_switch_CLI: enough of its semantics (handles,
    /// duplicate keys, multicast groups and nodes, counters) and of its reply texts to test
    /// the control plane's bookkeeping and undo logic.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<State>>);

    impl Fake {
        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.0.lock().unwrap()
        }

        fn exec(&self, c: &str) -> String {
            let mut s = self.state();
            s.log.push(c.to_string());
            if s.fail.as_deref().is_some_and(|f| c.starts_with(f)) {
                return "Invalid table operation (ERROR)".into();
            }
            let a: Vec<&str> = c.split_whitespace().collect();
            let num = |i: usize| a[i].parse::<u64>().unwrap();
            match a[0] {
                "reset_state" => {
                    let fail = s.fail.take();
                    *s = State {
                        next_handle: 100,
                        next_node: 7,
                        fail,
                        log: std::mem::take(&mut s.log),
                        ..State::default()
                    };
                    String::new()
                }
                "write_config_to_file" => {
                    std::fs::write(a[1], FIXTURE).unwrap();
                    String::new()
                }
                "counter_reset" | "register_reset" | "register_write" => String::new(),
                "counter_write" => {
                    s.counters.insert((a[1].into(), num(2)), num(3));
                    format!("{}[{}] has been updated", a[1], a[2])
                }
                "counter_read" => {
                    let v = s.counters.get(&(a[1].into(), num(2))).copied().unwrap_or(0);
                    format!("{}[{}]= ({} bytes, {v} packets)", a[1], a[2], 100 * v)
                }
                "table_add" => {
                    let key = c.split("=>").next().unwrap().to_string();
                    let dup = s
                        .entries
                        .iter()
                        .any(|((t, _), v)| t == a[1] && v.split("=>").next() == Some(&key));
                    if dup {
                        return "Invalid table operation (DUPLICATE_ENTRY)".into();
                    }
                    let h = s.next_handle;
                    s.next_handle += 3;
                    s.entries.insert((a[1].into(), h), c.into());
                    format!("Adding entry to exact match table {}\nEntry has been added with handle {h}", a[1])
                }
                "table_modify" => match s.entries.get_mut(&(a[1].into(), num(3))) {
                    Some(e) => {
                        let key = e.split("=>").next().unwrap().to_string();
                        *e = format!("{key}=>{}", c.split("=>").nth(1).unwrap());
                        format!("Modifying entry {} for exact match table {}", a[3], a[1])
                    }
                    None => "Invalid table operation (INVALID_HANDLE)".into(),
                },
                "table_delete" => match s.entries.remove(&(a[1].into(), num(2))) {
                    Some(_) => format!("Deleting entry {} from {}", a[2], a[1]),
                    None => "Invalid table operation (INVALID_HANDLE)".into(),
                },
                "mc_mgrp_create" => {
                    if s.groups.contains_key(&num(1)) {
                        return "Invalid PRE operation (DUPLICATE_MGID)".into();
                    }
                    s.groups.insert(num(1), BTreeSet::new());
                    format!("Creating multicast group {}", a[1])
                }
                "mc_mgrp_destroy" => match s.groups.remove(&num(1)) {
                    Some(_) => format!("Destroying multicast group {}", a[1]),
                    None => "Invalid PRE operation (INVALID_MGID)".into(),
                },
                "mc_node_create" => {
                    let h = s.next_node;
                    s.next_node += 2;
                    s.nodes.insert(h, (num(1), num(2)));
                    format!("Creating node with rid {} , port map 1 and lag map \nnode was created with handle {h}", a[1])
                }
                "mc_node_associate" => {
                    let (g, h) = (num(1), num(2));
                    if !s.nodes.contains_key(&h) {
                        return "Invalid PRE operation (INVALID_L1_HANDLE)".into();
                    }
                    match s.groups.get_mut(&g) {
                        Some(m) => {
                            m.insert(h);
                            format!("Associating node {h} to multicast group {g}")
                        }
                        None => "Invalid PRE operation (INVALID_MGID)".into(),
                    }
                }
                "mc_node_dissociate" => {
                    let (g, h) = (num(1), num(2));
                    match s.groups.get_mut(&g).map(|m| m.remove(&h)) {
                        Some(true) => format!("Dissociating node {h} from multicast group {g}"),
                        _ => "Invalid PRE operation (INVALID_L1_HANDLE)".into(),
                    }
                }
                "mc_node_destroy" => {
                    let h = num(1);
                    if s.groups.values().any(|m| m.contains(&h)) {
                        // bmv2 would leave a dangling member: the control plane must
                        // dissociate first.
                        return "Invalid PRE operation (NODE_STILL_ASSOCIATED)".into();
                    }
                    match s.nodes.remove(&h) {
                        Some(_) => format!("Destroying node {h}"),
                        None => "Invalid PRE operation (INVALID_L1_HANDLE)".into(),
                    }
                }
                _ => format!("*** Unknown syntax: {c}"),
            }
        }

        fn entries(&self, table: &str) -> Vec<String> {
            self.state()
                .entries
                .iter()
                .filter(|((t, _), _)| t == table)
                .map(|(_, v)| v.clone())
                .collect()
        }
    }

    impl Runtime for Fake {
        fn run_all(
            &mut self,
            commands: &[String],
        ) -> Result<Vec<Result<String, CliError>>, CliError> {
            Ok(commands
                .iter()
                .map(|c| {
                    let o = self.exec(c);
                    cli_output::check(c, &o).map(|()| o)
                })
                .collect())
        }
    }

    const MAP: &str = r#"{"hosts": [
        {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "port": 1},
        {"ip": "10.0.0.2", "mac": "02:00:00:00:00:02", "port": 2},
        {"ip": "10.0.0.3", "mac": "02:00:00:00:00:03", "port": 3},
        {"ip": "10.0.0.254", "mac": "02:00:00:00:00:fe", "port": 0}]}"#;

    fn spec(id: u16, base: u32, hosts: &[u8]) -> JobSpec {
        let mut j: JobSpec = serde_json::from_str(&format!(
            r#"{{"id": {id}, "epoch": 1, "lanes": 64, "slot_base": {base}, "slot_count": 4, "workers": []}}"#
        ))
        .unwrap();
        j.workers = hosts
            .iter()
            .map(|h| {
                sketchreduce_wire::WorkerSpec::at(format!("10.0.0.{h}:4000{h}").parse().unwrap())
            })
            .collect();
        j
    }

    fn epoch(mut s: JobSpec, e: u32) -> JobSpec {
        s.epoch = e;
        s
    }

    fn switch() -> (Fake, Bmv2Switch<Fake>) {
        let fake = Fake::default();
        let sw = Bmv2Switch::connect(fake.clone(), PortMap::parse(MAP).unwrap()).unwrap();
        (fake, sw)
    }

    #[test]
    fn connect_reads_the_program_and_installs_l2() {
        let (fake, sw) = switch();
        assert_eq!(
            sw.program(),
            ProgramInfo {
                lanes: 64,
                pool_slots: 1024
            }
        );
        let l2 = fake.entries(names::L2_TABLE);
        assert_eq!(l2.len(), 4);
        assert!(l2.contains(
            &"table_add SrIngress.sr_l2 SrIngress.sr_l2_forward 02:00:00:00:00:fe => 0".to_string()
        ));
    }

    #[test]
    fn install_uses_the_handles_bmv2_returns() {
        let (fake, mut sw) = switch();
        sw.install(&epoch(spec(5, 8, &[2, 1, 3]), 0xabcd)).unwrap();
        assert_eq!(
            fake.entries(names::JOBS_TABLE),
            ["table_add SrIngress.sr_jobs SrIngress.sr_set_job 5 => 43981 3 64 8 4 1 0"]
        );
        let ranks = fake.entries(names::RANKS_TABLE);
        assert!(ranks.contains(&"table_add SrIngress.sr_ranks SrIngress.sr_set_rank 5 0 => 02:00:00:00:00:02 10.0.0.2 40002 2".to_string()), "{ranks:?}");
        assert_eq!(ranks.len(), 3);
        let dst = fake.entries(names::DST_TABLE);
        assert!(dst.contains(&"table_add SrEgress.sr_mcast_dst SrEgress.sr_set_dst 2 1 => 02:00:00:00:00:01 10.0.0.1 40001".to_string()), "{dst:?}");
        // Nodes 7, 9, 11 (the fake's handles) are the group's members.
        let s = fake.state();
        assert_eq!(s.groups[&1], BTreeSet::from([7, 9, 11]));
        assert_eq!(s.nodes[&9], (2, 1), "rid 2 (rank 1) on port 1");
        // The job entry is added last: after every reset and every other entry.
        let job_at = s
            .log
            .iter()
            .position(|c| c.starts_with("table_add SrIngress.sr_jobs"))
            .unwrap();
        assert_eq!(job_at, s.log.len() - 1);
        assert!(
            s.log
                .iter()
                .any(|c| c == "register_write SrIngress.sr_count 23 0"),
            "slot 11, set 1"
        );
        assert!(s
            .log
            .iter()
            .any(|c| c == "counter_write SrIngress.sr_job 15 0 0"));
    }

    #[test]
    fn remove_leaves_nothing_behind() {
        let (fake, mut sw) = switch();
        sw.install(&epoch(spec(5, 8, &[1, 2]), 1)).unwrap();
        sw.install(&epoch(spec(6, 0, &[3]), 2)).unwrap();
        sw.remove(5).unwrap();
        assert!(matches!(sw.remove(5), Err(Bmv2Error::UnknownJob(5))));
        let s = fake.state();
        assert_eq!(
            s.groups.keys().collect::<Vec<_>>(),
            [&2],
            "job 6 keeps group 2"
        );
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(
            s.entries
                .keys()
                .filter(|(t, _)| t != names::L2_TABLE)
                .count(),
            3
        );
        drop(s);
        // The freed index is reused.
        sw.install(&epoch(spec(7, 100, &[1]), 3)).unwrap();
        assert!(
            fake.entries(names::JOBS_TABLE)
                .iter()
                .any(|e| e.ends_with(" 1 0")),
            "group 1, index 0"
        );
    }

    #[test]
    fn replace_retires_the_old_epoch_first() {
        let (fake, mut sw) = switch();
        sw.install(&epoch(spec(5, 8, &[1, 2]), 111)).unwrap();
        fake.state().log.clear();
        sw.install(&epoch(spec(5, 16, &[2, 3, 1]), 222)).unwrap();
        let s = fake.state();
        // First command: the job entry gets the new epoch with the old parameters.
        assert!(
            s.log[0].starts_with("table_modify SrIngress.sr_jobs SrIngress.sr_set_job "),
            "{:?}",
            s.log[0]
        );
        assert!(s.log[0].ends_with("=> 222 2 64 8 4 1 0"), "{}", s.log[0]);
        assert!(s.log.last().unwrap().ends_with("=> 222 3 64 16 4 1 0"));
        drop(s);
        assert_eq!(fake.entries(names::JOBS_TABLE).len(), 1);
        assert_eq!(fake.entries(names::RANKS_TABLE).len(), 3);
        assert_eq!(fake.entries(names::DST_TABLE).len(), 3);
        assert_eq!(fake.state().nodes.len(), 3);
        assert_eq!(sw.job_ids(), [5]);
    }

    #[test]
    fn a_failure_undoes_everything() {
        let (fake, mut sw) = switch();
        sw.install(&epoch(spec(6, 0, &[3]), 9)).unwrap();
        let before: Vec<_> = fake.state().entries.keys().cloned().collect();
        for fail in [
            "table_add SrIngress.sr_ranks",
            "mc_node_associate",
            "table_add SrIngress.sr_jobs",
            "mc_node_create",
        ] {
            fake.state().fail = Some(fail.into());
            let e = sw.install(&epoch(spec(5, 8, &[1, 2]), 1)).unwrap_err();
            assert!(
                matches!(e, Bmv2Error::Cli(CliError::Command { .. })),
                "{fail}: {e}"
            );
            fake.state().fail = None;
            let s = fake.state();
            assert_eq!(
                s.entries.keys().cloned().collect::<Vec<_>>(),
                before,
                "{fail}"
            );
            assert_eq!(s.groups.len(), 1, "{fail}");
            assert_eq!(s.nodes.len(), 1, "{fail}");
            drop(s);
            assert_eq!(sw.job_ids(), [6]);
        }
        // And the job can be created afterwards.
        sw.install(&epoch(spec(5, 8, &[1, 2]), 1)).unwrap();
    }

    #[test]
    fn refusals() {
        let (_, mut sw) = switch();
        let mut s = spec(5, 8, &[1]);
        s.lanes = 128;
        let e = sw.install(&epoch(s.clone(), 1)).unwrap_err();
        assert!(e.to_string().contains("compiled for exactly 64"), "{e}");
        let e = sw.install(&epoch(spec(5, 8, &[9]), 1)).unwrap_err();
        assert!(matches!(e, Bmv2Error::Place(_)), "{e}");
        sw.install(&epoch(spec(5, 8, &[1]), 1)).unwrap();
        assert!(matches!(
            sw.install(&epoch(spec(6, 10, &[1]), 1)),
            Err(Bmv2Error::Overlap { job: 6, other: 5 })
        ));
        let mut moved = spec(7, 20, &[1]);
        moved.workers[0].port = Some(4);
        assert!(
            matches!(
                sw.install(&epoch(moved.clone(), 1)),
                Err(Bmv2Error::Invalid(_))
            ),
            "MAC on another port"
        );
        for id in 100..163u16 {
            sw.install(&epoch(spec(id, 100 + 4 * (id as u32 - 100), &[2]), 1))
                .unwrap();
        }
        assert!(matches!(
            sw.install(&epoch(spec(200, 900, &[2]), 1)),
            Err(Bmv2Error::Full)
        ));
    }

    #[test]
    fn counters_are_read_from_their_indices() {
        let (fake, mut sw) = switch();
        sw.install(&epoch(spec(5, 8, &[1, 2]), 1)).unwrap();
        sw.install(&epoch(spec(6, 0, &[3]), 2)).unwrap();
        let r = DropReason::ALL.len() as u64;
        {
            let mut s = fake.state();
            let mut set = |c: &str, i: u64, v: u64| {
                s.counters.insert((c.to_string(), i), v);
            };
            set(names::CTR_GLOBAL, 0, 3); // malformed
            set(names::CTR_GLOBAL, 1, 4); // unknown_job
            set(names::CTR_GLOBAL, r, 50); // packets in
            set(names::CTR_TX, 0, 40);
            // Job 6 has index 1: counters 16..32.
            set(names::CTR_JOB, 16 + 2, 6); // its bad_epoch
            set(names::CTR_JOB, 16 + r, 7); // data in
            set(names::CTR_JOB, 16 + r + 1, 8); // completions
            set(names::CTR_JOB, 16 + r + 2, 9); // unicast
            set(names::CTR_JOB, 16 + r + 3, 10); // probes
            set(names::CTR_TX_MCAST, 1, 11);
        }
        let c = sw.counters().unwrap();
        assert_eq!((c.packets_in, c.packets_out), (50, 40));
        assert_eq!(&c.drops[..2], &[3, 4]);
        assert_eq!(c.jobs.len(), 2);
        assert_eq!(c.jobs[0], (5, JobCounters::default()));
        let (id, j) = c.jobs[1];
        assert_eq!(id, 6);
        assert_eq!(j.drops[2], 6);
        assert_eq!(
            (
                j.data_in,
                j.completions,
                j.results_unicast,
                j.probes,
                j.results_multicast
            ),
            (7, 8, 9, 10, 11)
        );
    }
}
