//! Job descriptions: who takes part in an aggregation, through which slots, under which epoch.
//!
//! The same JSON file feeds `sketchreduce switch --jobs`, `sketchreduce p4 config --jobs` and
//! the worker agents, so the emulator and a bmv2 switch are configured identically.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use thiserror::Error;

use crate::{LANE_CHOICES, MAX_WORKERS};

/// Longest `mac` string accepted in a worker spec (`xx:xx:xx:xx:xx:xx`).
pub const MAC_LEN: usize = 17;

/// Errors in a job description.
#[derive(Debug, Error)]
pub enum JobError {
    /// The file could not be read.
    #[error("cannot read job file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("cannot parse job file {path}: {source}")]
    Parse {
        /// File path.
        path: String,
        /// Underlying error.
        source: serde_json::Error,
    },
    /// A job violates a limit.
    #[error("job {job}: {reason}")]
    Invalid {
        /// Job id.
        job: u16,
        /// What is wrong.
        reason: String,
    },
}

/// One worker of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// The worker's data address: the only source the switch accepts this rank's DATA and
    /// PROBE from, and where its RESULTs and STATUSes go (its agent's UDP socket, or the
    /// remote address of its QUIC connection).
    pub addr: SocketAddr,
    /// Ethernet address of the worker, for the P4 egress rewrite (ignored by the emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Switch port the worker hangs off, for the P4 multicast group (ignored by the emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl WorkerSpec {
    /// A worker known only by its address (enough for the emulator; P4 also needs `mac`
    /// and `port`).
    pub fn at(addr: SocketAddr) -> Self {
        WorkerSpec {
            addr,
            mac: None,
            port: None,
        }
    }
}

/// One aggregation job: the unit of isolation in the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job id carried in every packet.
    pub id: u16,
    /// The job's registration epoch, carried in every packet: nonzero, assigned at random by
    /// the switch when the job is created (a `create` request's value is ignored), given
    /// explicitly in static job files. 0 means "not assigned yet".
    #[serde(default)]
    pub epoch: u32,
    /// Lanes per packet, one of [`LANE_CHOICES`].
    pub lanes: u16,
    /// First slot of the job's range in the switch pool.
    pub slot_base: u32,
    /// Number of slots the job owns (its maximum window).
    pub slot_count: u32,
    /// The workers, indexed by rank.
    pub workers: Vec<WorkerSpec>,
}

impl JobSpec {
    /// Number of workers.
    pub fn world(&self) -> usize {
        self.workers.len()
    }

    /// Bitmap with one bit per worker: the value of a complete slot's "seen" register.
    pub fn full_bitmap(&self) -> u32 {
        match self.workers.len() {
            32 => u32::MAX,
            n => (1u32 << n) - 1,
        }
    }

    /// Checks the job against a switch's limits: `pool_slots` slots in the pool, lane counts up
    /// to `max_lanes`; 1..=32 workers with distinct addresses (the source check could not tell
    /// two ranks at one address apart), well-formed `mac` strings. The epoch is not checked
    /// (see [`JobSpec::check_epoch`]).
    pub fn validate(&self, pool_slots: u32, max_lanes: u16) -> Result<(), JobError> {
        let bad = |reason: String| JobError::Invalid {
            job: self.id,
            reason,
        };
        if self.workers.is_empty() || self.workers.len() > MAX_WORKERS {
            return Err(bad(format!(
                "{} workers; a job needs 1..={MAX_WORKERS}",
                self.workers.len()
            )));
        }
        if !LANE_CHOICES.contains(&self.lanes) {
            return Err(bad(format!(
                "{} lanes per packet; allowed: {LANE_CHOICES:?}",
                self.lanes
            )));
        }
        if self.lanes > max_lanes {
            return Err(bad(format!(
                "{} lanes per packet; this switch supports at most {max_lanes}",
                self.lanes
            )));
        }
        for (r, w) in self.workers.iter().enumerate() {
            // Results go to the registered address and DATA must come from it: an
            // unspecified address or port can never match a real sender.
            if w.addr.ip().is_unspecified() || w.addr.port() == 0 {
                return Err(bad(format!(
                    "rank {r}: address {} is not a concrete IP address and port (bind the worker's socket to the address the switch sees)",
                    w.addr
                )));
            }
            if self.workers[..r].iter().any(|o| o.addr == w.addr) {
                return Err(bad(format!(
                    "rank {r} has the address {} of an earlier rank",
                    w.addr
                )));
            }
            if let Some(m) = &w.mac {
                if !is_mac(m) {
                    return Err(bad(format!(
                        "rank {r}: mac {:?} is not xx:xx:xx:xx:xx:xx",
                        m.chars().take(MAC_LEN + 3).collect::<String>()
                    )));
                }
            }
        }
        let end = self.slot_base as u64 + self.slot_count as u64;
        if self.slot_count == 0 || end > pool_slots as u64 {
            return Err(bad(format!(
                "slots {}..{end} do not fit a pool of {pool_slots}",
                self.slot_base
            )));
        }
        Ok(())
    }

    /// Checks that the epoch is assigned (nonzero), as a static job file must give it.
    pub fn check_epoch(&self) -> Result<(), JobError> {
        if self.epoch == 0 {
            return Err(JobError::Invalid {
                job: self.id,
                reason: "epoch must be a nonzero u32 (the job file gives it explicitly)".into(),
            });
        }
        Ok(())
    }

    /// Whether two jobs' slot ranges overlap.
    pub fn overlaps(&self, other: &JobSpec) -> bool {
        let end = |j: &JobSpec| j.slot_base as u64 + j.slot_count as u64;
        (self.slot_base as u64) < end(other) && (other.slot_base as u64) < end(self)
    }
}

fn is_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    m.len() == MAC_LEN
        && parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The job file: `{"jobs": [JobSpec, ...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Jobs to register at start.
    pub jobs: Vec<JobSpec>,
}

impl JobFile {
    /// Reads and parses a job file (no validation against a pool size; see [`JobSpec::validate`]).
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Io {
            path: p.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| JobError::Parse { path: p, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> JobSpec {
        JobSpec {
            id: 7,
            epoch: 1,
            lanes: 64,
            slot_base: 10,
            slot_count: 20,
            workers: (0..n)
                .map(|i| WorkerSpec {
                    addr: format!("127.0.0.1:{}", 5000 + i).parse().unwrap(),
                    mac: None,
                    port: None,
                })
                .collect(),
        }
    }

    #[test]
    fn validation() {
        assert!(job(4).validate(30, 2048).is_ok());
        assert!(job(4).validate(29, 2048).is_err());
        assert!(job(0).validate(100, 2048).is_err());
        assert!(job(33).validate(100, 2048).is_err());
        assert!(job(32).validate(100, 2048).is_ok());
        let mut j = job(2);
        j.lanes = 48;
        assert!(j.validate(100, 2048).is_err());
        j.lanes = 2048;
        assert!(j.validate(100, 2048).is_ok());
        assert!(
            j.validate(100, 1024).is_err(),
            "above the switch's capability"
        );
        let mut j = job(3);
        j.workers[2].addr = j.workers[0].addr;
        assert!(j.validate(100, 2048).is_err(), "duplicate address");
        let mut j = job(1);
        j.workers[0].mac = Some("02:00:00:00:00:0g".into());
        assert!(j.validate(100, 2048).is_err());
        j.workers[0].mac = Some("02:00:00:00:00:0A".into());
        assert!(j.validate(100, 2048).is_ok());
        j.epoch = 0;
        assert!(j.check_epoch().is_err());
        assert_eq!(job(32).full_bitmap(), u32::MAX);
        assert_eq!(job(3).full_bitmap(), 0b111);
    }

    #[test]
    fn overlap() {
        let a = job(1);
        let mut b = job(1);
        b.slot_base = 30;
        assert!(!a.overlaps(&b));
        b.slot_base = 29;
        assert!(a.overlaps(&b));
        // Ranges near u32::MAX do not wrap.
        b.slot_base = u32::MAX - 1;
        b.slot_count = u32::MAX;
        assert!(!a.overlaps(&b));
    }

    #[test]
    fn json_shape() {
        let text = r#"{"jobs":[{"id":1,"epoch":99,"lanes":64,"slot_base":0,"slot_count":8,
            "workers":[{"addr":"10.0.0.1:40000","mac":"02:00:00:00:00:01","port":1},
                       {"addr":"10.0.0.2:40000"}]}]}"#;
        let f: JobFile = serde_json::from_str(text).unwrap();
        assert_eq!(f.jobs[0].epoch, 99);
        assert_eq!(f.jobs[0].workers[0].port, Some(1));
        assert_eq!(f.jobs[0].workers[1].mac, None);
        // A v1 file (token instead of epoch) is refused by name, not read with epoch 0.
        let v1 = text.replace("epoch", "token");
        let e = serde_json::from_str::<JobFile>(&v1).unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
    }
}
