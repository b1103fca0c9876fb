//! The control plane proper: the job registry (epochs, leases, limits) and request dispatch,
//! over a [`Backend`] that applies the decisions to a data plane (the emulator's
//! `ShardedCore`, or a bmv2 switch through its runtime CLI).
//!
//! Clock-free like the data path: every time-dependent call takes an explicit `now`; the I/O
//! layer calls [`ControlPlane::sweep`] periodically to expire leases.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sketchreduce_wire::control::{Info, Request, Response, MAX_LEASE_MS, VERSION};
use sketchreduce_wire::{Counters, ErrorKind, JobSpec, MAX_WORKERS};
use thiserror::Error;

use crate::auth::new_epoch;

/// What a data plane reports about itself (the switch-specific part of [`Info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendInfo {
    /// First UDP data port.
    pub data_port: u16,
    /// Consecutive data ports.
    pub data_ports: u16,
    /// Slots in the pool.
    pub slots: u32,
    /// Largest lane count a job may use.
    pub max_lanes: u16,
}

/// A data plane's refusal or failure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendError {
    /// The request is valid for the protocol but this data plane cannot hold it (e.g. a lane
    /// count other than the one a P4 program was compiled for).
    #[error("{0}")]
    Invalid(String),
    /// The data plane failed (e.g. its runtime CLI exited with an error).
    #[error("data plane failure: {0}")]
    Failed(String),
}

/// The operations a control plane needs from a data plane. The [`ControlPlane`] serialises
/// `create`, `unregister` and `counters` (one at a time; `info` may come at any time and should
/// be a cheap constant), and keeps them consistent with its registry: `create` is
/// called with a validated spec (nonzero epoch, slot range free of other jobs, within
/// `info()`'s limits) and replaces any job with the same id; `unregister` only for a job
/// that exists.
pub trait Backend: Send + Sync {
    /// Ports, pool size and lane capability.
    fn info(&self) -> BackendInfo;
    /// Installs `spec` (its `epoch` is set): resets the `bitmap`, `count` and `round`
    /// registers of its slot range, and replaces a job with the same id if there is one.
    fn create(&self, spec: &JobSpec) -> Result<(), BackendError>;
    /// Removes job `id`.
    fn unregister(&self, id: u16) -> Result<(), BackendError>;
    /// Reads every counter (for `counters` requests and the lease sweeper).
    fn counters(&self) -> Result<Counters, BackendError>;
}

impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn info(&self) -> BackendInfo {
        (**self).info()
    }
    fn create(&self, spec: &JobSpec) -> Result<(), BackendError> {
        (**self).create(spec)
    }
    fn unregister(&self, id: u16) -> Result<(), BackendError> {
        (**self).unregister(id)
    }
    fn counters(&self) -> Result<Counters, BackendError> {
        (**self).counters()
    }
}

/// A refused control operation: the error kind sent on the wire and a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind}: {message}")]
pub struct PlaneError {
    /// Machine-readable reason.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
}

impl PlaneError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PlaneError {
            kind,
            message: message.into(),
        }
    }
}

impl From<PlaneError> for Response {
    fn from(e: PlaneError) -> Response {
        Response::Error {
            kind: e.kind,
            message: e.message,
        }
    }
}

/// How a job was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From a job file at start (explicit epoch, no lease). Such jobs cannot be replaced or
    /// unregistered through the control endpoint (`conflict`).
    Static,
    /// Through the control endpoint or the in-process API.
    Dynamic,
}

#[derive(Debug)]
struct Entry {
    spec: JobSpec,
    origin: Origin,
    lease: Option<Duration>,
    /// data_in + probes at the last sweep that saw them change (or at creation).
    activity: u64,
    /// When `activity` last changed (or the job was created).
    active_at: Instant,
}

/// Limits of a control plane beyond the backend's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneConfig {
    /// Most jobs at once.
    pub max_jobs: usize,
    /// Whether the endpoint authenticates requests (reported by `info`).
    pub auth: bool,
}

/// The job registry and request dispatcher, shared by every control connection.
#[derive(Debug)]
pub struct ControlPlane<B> {
    backend: B,
    cfg: PlaneConfig,
    jobs: Mutex<BTreeMap<u16, Entry>>,
}

impl<B: Backend> ControlPlane<B> {
    /// A control plane over `backend` with no jobs.
    pub fn new(backend: B, cfg: PlaneConfig) -> Self {
        ControlPlane {
            backend,
            cfg,
            jobs: Mutex::new(BTreeMap::new()),
        }
    }

    /// The data plane.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, Entry>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to `info`.
    pub fn info(&self) -> Info {
        let b = self.backend.info();
        Info {
            version: VERSION,
            data_port: b.data_port,
            data_ports: b.data_ports,
            slots: b.slots,
            max_lanes: b.max_lanes,
            max_workers: MAX_WORKERS as u32,
            max_jobs: self.cfg.max_jobs as u32,
            auth: self.cfg.auth,
        }
    }

    /// Answers one request (already authenticated by the session).
    pub fn handle(&self, req: Request, now: Instant) -> Response {
        let r = match req {
            Request::Info {} => Ok(Response::Info(self.info())),
            Request::Create {
                spec,
                replace,
                lease_ms,
            } => {
                if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
                    Err(PlaneError::new(
                        ErrorKind::BadRequest,
                        format!("lease_ms {lease_ms} outside 1..={MAX_LEASE_MS} (0, no lease, is for job files only)"),
                    ))
                } else {
                    let lease = Duration::from_millis(lease_ms);
                    let id = spec.id;
                    self.create(spec, replace, Some(lease), now).map(|epoch| {
                        tracing::info!(job = id, epoch, replace, lease_ms, "job created");
                        Response::Created { epoch }
                    })
                }
            }
            Request::Join { job } => self.join(job).map(Response::Joined),
            Request::Unregister { job, epoch } => self.unregister(job, epoch).map(|()| {
                tracing::info!(job, epoch, "job unregistered");
                Response::Done
            }),
            Request::Counters {} => {
                // Under the registry lock, so that backend calls never overlap.
                let _jobs = self.lock();
                self.backend
                    .counters()
                    .map(Response::Counters)
                    .map_err(backend_err)
            }
        };
        r.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "control request refused");
            e.into()
        })
    }

    /// Creates (or, with `replace`, re-creates) a job under a fresh random epoch and returns
    /// it. `lease`: unregister after this long without an accepted DATA or PROBE (`None`: never;
    /// the network API always has one). The spec's own epoch is ignored.
    pub fn create(
        &self,
        mut spec: JobSpec,
        replace: bool,
        lease: Option<Duration>,
        now: Instant,
    ) -> Result<u32, PlaneError> {
        let mut jobs = self.lock();
        let avoid = match jobs.get(&spec.id) {
            Some(e) if e.origin == Origin::Static => {
                return Err(PlaneError::new(
                    if replace {
                        ErrorKind::Conflict
                    } else {
                        ErrorKind::Exists
                    },
                    format!("job {} is configured statically (job file)", spec.id),
                ))
            }
            Some(_) if !replace => {
                return Err(PlaneError::new(
                    ErrorKind::Exists,
                    format!("job {} exists (join it, or create with replace)", spec.id),
                ))
            }
            Some(e) => e.spec.epoch,
            None => 0,
        };
        spec.epoch = new_epoch(avoid);
        self.install(&mut jobs, spec, Origin::Dynamic, lease, now)
    }

    /// Adds a job with its explicit epoch, no lease, not replaceable through the control
    /// endpoint (job files at start).
    pub fn add_static(&self, spec: JobSpec, now: Instant) -> Result<u32, PlaneError> {
        spec.check_epoch()
            .map_err(|e| PlaneError::new(ErrorKind::Invalid, e.to_string()))?;
        let mut jobs = self.lock();
        if jobs.contains_key(&spec.id) {
            return Err(PlaneError::new(
                ErrorKind::Exists,
                format!("job {} is listed twice", spec.id),
            ));
        }
        self.install(&mut jobs, spec, Origin::Static, None, now)
    }

    fn install(
        &self,
        jobs: &mut BTreeMap<u16, Entry>,
        spec: JobSpec,
        origin: Origin,
        lease: Option<Duration>,
        now: Instant,
    ) -> Result<u32, PlaneError> {
        let b = self.backend.info();
        spec.validate(b.slots, b.max_lanes)
            .map_err(|e| PlaneError::new(ErrorKind::Invalid, e.to_string()))?;
        if !jobs.contains_key(&spec.id) && jobs.len() >= self.cfg.max_jobs {
            return Err(PlaneError::new(
                ErrorKind::Limit,
                format!("the switch holds its maximum of {} jobs", self.cfg.max_jobs),
            ));
        }
        if let Some(o) = jobs
            .values()
            .find(|o| o.spec.id != spec.id && o.spec.overlaps(&spec))
        {
            return Err(PlaneError::new(
                ErrorKind::Overlap,
                format!(
                    "job {}: slots {}..{} overlap job {} ({}..{})",
                    spec.id,
                    spec.slot_base,
                    spec.slot_base as u64 + spec.slot_count as u64,
                    o.spec.id,
                    o.spec.slot_base,
                    o.spec.slot_base as u64 + o.spec.slot_count as u64
                ),
            ));
        }
        self.backend.create(&spec).map_err(backend_err)?;
        let epoch = spec.epoch;
        jobs.insert(
            spec.id,
            Entry {
                spec,
                origin,
                lease,
                activity: 0,
                active_at: now,
            },
        );
        Ok(epoch)
    }

    /// The spec (with epoch) of job `id`.
    pub fn join(&self, id: u16) -> Result<JobSpec, PlaneError> {
        self.lock()
            .get(&id)
            .map(|e| e.spec.clone())
            .ok_or_else(|| unknown(id))
    }

    /// Removes job `id` if it has `epoch` (and was not configured statically).
    pub fn unregister(&self, id: u16, epoch: u32) -> Result<(), PlaneError> {
        let mut jobs = self.lock();
        let e = jobs.get(&id).ok_or_else(|| unknown(id))?;
        if e.spec.epoch != epoch {
            return Err(PlaneError::new(
                ErrorKind::BadEpoch,
                format!("job {id} has another epoch than {epoch}"),
            ));
        }
        if e.origin == Origin::Static {
            return Err(PlaneError::new(
                ErrorKind::Conflict,
                format!("job {id} is configured statically (job file)"),
            ));
        }
        self.backend.unregister(id).map_err(backend_err)?;
        jobs.remove(&id);
        Ok(())
    }

    /// The registered jobs (with epochs), by id.
    pub fn jobs(&self) -> Vec<JobSpec> {
        self.lock().values().map(|e| e.spec.clone()).collect()
    }

    /// Expires leases: a job whose `data_in + probes` counters have not changed for its lease
    /// is unregistered. Call periodically (every second or so) with the current time; returns
    /// the expired jobs as (id, epoch).
    pub fn sweep(&self, now: Instant) -> Vec<(u16, u32)> {
        let mut jobs = self.lock();
        if jobs.values().all(|e| e.lease.is_none()) {
            return Vec::new();
        }
        let counters = match self.backend.counters() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "lease sweep: cannot read counters");
                return Vec::new();
            }
        };
        let mut expired = Vec::new();
        for (id, e) in jobs.iter_mut() {
            let Some(lease) = e.lease else { continue };
            let activity = counters.job(*id).map_or(0, |c| c.data_in + c.probes);
            if activity != e.activity {
                e.activity = activity;
                e.active_at = now;
            } else if now.saturating_duration_since(e.active_at) >= lease {
                expired.push((*id, e.spec.epoch));
            }
        }
        for (id, epoch) in &expired {
            match self.backend.unregister(*id) {
                Ok(()) => {
                    jobs.remove(id);
                    tracing::info!(job = id, epoch, "lease expired: job unregistered");
                }
                Err(e) => {
                    tracing::warn!(job = id, error = %e, "lease expired but unregister failed")
                }
            }
        }
        expired.retain(|(id, _)| !jobs.contains_key(id));
        expired
    }
}

fn unknown(id: u16) -> PlaneError {
    PlaneError::new(ErrorKind::UnknownJob, format!("no job {id}"))
}

fn backend_err(e: BackendError) -> PlaneError {
    match e {
        BackendError::Invalid(m) => PlaneError::new(ErrorKind::Invalid, m),
        BackendError::Failed(m) => PlaneError::new(ErrorKind::Internal, m),
    }
}

#[cfg(test)]
mod tests {
    //! The registry's rules against an in-memory backend (pure logic; the real backends are
    //! tested in switch-emu and p4gen).
    use super::*;
    use sketchreduce_wire::{JobCounters, WorkerSpec};

    #[derive(Default)]
    struct Fake {
        jobs: Mutex<BTreeMap<u16, (JobSpec, JobCounters)>>,
    }

    impl Backend for Fake {
        fn info(&self) -> BackendInfo {
            BackendInfo {
                data_port: 1000,
                data_ports: 2,
                slots: 100,
                max_lanes: 256,
            }
        }
        fn create(&self, spec: &JobSpec) -> Result<(), BackendError> {
            let mut j = self.jobs.lock().unwrap();
            j.insert(spec.id, (spec.clone(), JobCounters::default()));
            Ok(())
        }
        fn unregister(&self, id: u16) -> Result<(), BackendError> {
            self.jobs.lock().unwrap().remove(&id);
            Ok(())
        }
        fn counters(&self) -> Result<Counters, BackendError> {
            Ok(Counters {
                jobs: self
                    .jobs
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(i, (_, c))| (*i, *c))
                    .collect(),
                ..Default::default()
            })
        }
    }

    fn spec(id: u16, base: u32) -> JobSpec {
        JobSpec {
            id,
            epoch: 0,
            lanes: 64,
            slot_base: base,
            slot_count: 10,
            workers: vec![WorkerSpec::at(format!("10.0.0.{id}:1").parse().unwrap())],
        }
    }

    fn plane(max_jobs: usize) -> ControlPlane<Fake> {
        ControlPlane::new(
            Fake::default(),
            PlaneConfig {
                max_jobs,
                auth: true,
            },
        )
    }

    fn kind(r: Result<impl std::fmt::Debug, PlaneError>) -> ErrorKind {
        r.unwrap_err().kind
    }

    #[test]
    fn create_join_replace_unregister() {
        let p = plane(4);
        let t = Instant::now();
        let l = Some(Duration::from_secs(60));
        let e1 = p.create(spec(1, 0), false, l, t).unwrap();
        assert_ne!(e1, 0);
        assert_eq!(p.join(1).unwrap().epoch, e1);
        assert_eq!(p.backend().jobs.lock().unwrap()[&1].0.epoch, e1);
        assert_eq!(kind(p.create(spec(1, 0), false, l, t)), ErrorKind::Exists);
        let e2 = p.create(spec(1, 0), true, l, t).unwrap();
        assert_ne!(e2, e1, "a replaced job gets a new epoch");
        assert_eq!(kind(p.unregister(1, e1)), ErrorKind::BadEpoch);
        assert_eq!(kind(p.join(2)), ErrorKind::UnknownJob);
        assert_eq!(kind(p.create(spec(2, 5), false, l, t)), ErrorKind::Overlap);
        let mut bad = spec(2, 50);
        bad.lanes = 512;
        assert_eq!(kind(p.create(bad, false, l, t)), ErrorKind::Invalid);
        p.unregister(1, e2).unwrap();
        assert_eq!(kind(p.unregister(1, e2)), ErrorKind::UnknownJob);
        assert!(p.backend().jobs.lock().unwrap().is_empty());
    }

    #[test]
    fn limits_and_static_jobs() {
        let p = plane(2);
        let t = Instant::now();
        let mut s = spec(1, 0);
        assert_eq!(
            kind(p.add_static(s.clone(), t)),
            ErrorKind::Invalid,
            "epoch 0"
        );
        s.epoch = 77;
        assert_eq!(p.add_static(s.clone(), t).unwrap(), 77);
        assert_eq!(
            kind(p.create(spec(1, 0), true, None, t)),
            ErrorKind::Conflict
        );
        assert_eq!(kind(p.unregister(1, 77)), ErrorKind::Conflict);
        p.create(spec(2, 10), false, None, t).unwrap();
        assert_eq!(
            kind(p.create(spec(3, 20), false, None, t)),
            ErrorKind::Limit
        );
        // Replacing an existing job is not a new one: allowed at the limit.
        p.create(spec(2, 30), true, None, t).unwrap();
        assert_eq!(p.jobs().len(), 2);
        match p.handle(
            Request::Create {
                spec: spec(3, 40),
                replace: false,
                lease_ms: 0,
            },
            t,
        ) {
            Response::Error { kind, .. } => assert_eq!(kind, ErrorKind::BadRequest),
            other => panic!("{other:?}"),
        }
        let info = p.info();
        assert_eq!((info.max_jobs, info.max_lanes, info.auth), (2, 256, true));
    }

    /// Changes job 1's counters in the fake data plane (traffic).
    fn bump(p: &ControlPlane<Fake>, f: impl FnOnce(&mut JobCounters)) {
        f(&mut p.backend().jobs.lock().unwrap().get_mut(&1).unwrap().1);
    }

    #[test]
    fn leases_expire_without_traffic_only() {
        let p = plane(4);
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_millis(n);
        let e = p
            .create(spec(1, 0), false, Some(Duration::from_millis(1000)), t0)
            .unwrap();
        p.create(spec(2, 20), false, None, t0).unwrap();
        assert!(p.sweep(s(500)).is_empty());
        // Traffic at 900 ms: the lease restarts at the sweep that sees it.
        bump(&p, |c| c.data_in = 3);
        assert!(p.sweep(s(900)).is_empty());
        assert!(p.sweep(s(1800)).is_empty());
        bump(&p, |c| c.probes = 1);
        assert!(p.sweep(s(1850)).is_empty());
        assert!(p.sweep(s(2800)).is_empty());
        assert_eq!(p.sweep(s(2850)), vec![(1, e)]);
        assert_eq!(kind(p.join(1)), ErrorKind::UnknownJob);
        // The job without a lease stays.
        assert!(p.sweep(s(1_000_000)).is_empty());
        assert!(p.join(2).is_ok());
    }
}
