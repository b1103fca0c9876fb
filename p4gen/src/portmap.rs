//! The port map: which host hangs off which bmv2 port, with which Ethernet address.
//!
//! Workers register jobs with their IPv4 address and UDP port only (they do not know the
//! switch port they are attached to), but the P4 switch needs each worker's switch port (for
//! the multicast group and the source check) and MAC (the replies' destination). The control
//! plane (`sketchreduce p4 control --ports FILE`) fills them in from this file:
//!
//! ```json
//! {"hosts": [{"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "port": 1},
//!            {"ip": "10.0.0.254", "mac": "02:00:00:00:00:fe", "port": 0}]}
//! ```
//!
//! Every host also gets an L2 forwarding entry (its MAC → its port) for the traffic that is
//! not sketchreduce's (TCP between workers, the control connection).

use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;
use sketchreduce_wire::{JobSpec, WorkerSpec};
use thiserror::Error;

use crate::MAX_PORT;

/// Errors in a port map or in resolving a job's workers against it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PortMapError {
    /// The file could not be read or parsed.
    #[error("port map {path}: {reason}")]
    File {
        /// File path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A host entry is unusable.
    #[error("port map host {ip}: {reason}")]
    Host {
        /// The host's address.
        ip: Ipv4Addr,
        /// What is wrong.
        reason: String,
    },
    /// A worker of a job cannot be placed on a switch port.
    #[error("job {job}, worker {rank} ({addr}): {reason}")]
    Worker {
        /// Job id.
        job: u16,
        /// Rank.
        rank: usize,
        /// The worker's registered address.
        addr: String,
        /// What is missing or wrong.
        reason: String,
    },
}

/// One host attached to the switch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Host {
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its Ethernet address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The bmv2 port it is attached to (`simple_switch -i PORT@IFACE`).
    pub port: u16,
}

/// The hosts attached to the switch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PortMap {
    /// One entry per host.
    pub hosts: Vec<Host>,
}

/// A worker's place on the switch: where its results go and where its packets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Canonical lower-case MAC.
    pub mac: String,
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// UDP port.
    pub udp_port: u16,
    /// bmv2 port.
    pub port: u16,
}

impl PortMap {
    /// Parses and checks a port map (MACs well-formed, ports usable, no IP or MAC twice).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut m: PortMap = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for i in 0..m.hosts.len() {
            let h = &m.hosts[i];
            let bad = |reason: String| PortMapError::Host { ip: h.ip, reason }.to_string();
            let mac = crate::parse_mac(&h.mac)
                .ok_or_else(|| bad(format!("`{}` is not a MAC address", h.mac)))?;
            if h.port > MAX_PORT {
                return Err(bad(format!(
                    "port {}: bmv2 ports are 0..={MAX_PORT}",
                    h.port
                )));
            }
            if let Some(o) = m.hosts[..i].iter().find(|o| o.ip == h.ip || o.mac == mac) {
                return Err(bad(format!("{} / {} listed twice", o.ip, o.mac)));
            }
            m.hosts[i].mac = mac;
        }
        Ok(m)
    }

    /// Reads a port map file.
    pub fn load(path: &Path) -> Result<Self, PortMapError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PortMapError::File {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|reason| PortMapError::File { path: p, reason })
    }

    /// The host with address `ip`.
    pub fn host(&self, ip: Ipv4Addr) -> Option<&Host> {
        self.hosts.iter().find(|h| h.ip == ip)
    }

    /// Places every worker of `job`: its `mac`/`port` from the job spec when given (static
    /// job files), else from this map by IPv4 address.
    pub fn place(&self, job: &JobSpec) -> Result<Vec<Placement>, PortMapError> {
        job.workers
            .iter()
            .enumerate()
            .map(|(rank, w)| self.place_one(job.id, rank, w))
            .collect()
    }

    fn place_one(&self, job: u16, rank: usize, w: &WorkerSpec) -> Result<Placement, PortMapError> {
        let bad = |reason: String| PortMapError::Worker {
            job,
            rank,
            addr: w.addr.to_string(),
            reason,
        };
        let ip = match w.addr.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            std::net::IpAddr::V4(_) => {
                return Err(bad(
                    "the unspecified address 0.0.0.0 cannot be a source to check or a \
                     destination; register the worker's interface address"
                        .into(),
                ))
            }
            std::net::IpAddr::V6(_) => {
                return Err(bad("IPv6; the P4 program handles IPv4 only".into()))
            }
        };
        let host = self.host(ip);
        let mac = match (&w.mac, host) {
            (Some(m), _) => crate::parse_mac(m)
                .ok_or_else(|| bad(format!("`{m}` is not a MAC address (aa:bb:cc:dd:ee:ff)")))?,
            (None, Some(h)) => h.mac.clone(),
            (None, None) => {
                return Err(bad(
                    "no `mac` in the job spec and no port map entry for this address".into(),
                ))
            }
        };
        let port = match (w.port, host) {
            (Some(p), _) => p,
            (None, Some(h)) => h.port,
            (None, None) => {
                return Err(bad(
                    "no `port` in the job spec and no port map entry for this address".into(),
                ))
            }
        };
        if port > MAX_PORT {
            return Err(bad(format!(
                "port {port}: bmv2 ports are 0..={MAX_PORT} (511 is the drop port)"
            )));
        }
        Ok(Placement {
            mac,
            ip,
            udp_port: w.addr.port(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"{"hosts": [
        {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "port": 1},
        {"ip": "10.0.0.2", "mac": "02:00:00:00:00:02", "port": 2},
        {"ip": "10.0.0.254", "mac": "02:00:00:00:00:FE", "port": 0}]}"#;

    fn job(addrs: &[&str]) -> JobSpec {
        let mut j: JobSpec = serde_json::from_str(
            r#"{"id": 3, "epoch": 1, "lanes": 64, "slot_base": 0, "slot_count": 4, "workers": []}"#,
        )
        .unwrap();
        j.workers = addrs
            .iter()
            .map(|a| WorkerSpec::at(a.parse().unwrap()))
            .collect();
        j
    }

    #[test]
    fn places_workers_by_ip() {
        let m = PortMap::parse(MAP).unwrap();
        assert_eq!(m.hosts[2].mac, "02:00:00:00:00:fe", "canonical MAC");
        let p = m
            .place(&job(&["10.0.0.2:41000", "10.0.0.1:41001"]))
            .unwrap();
        assert_eq!(
            p[0],
            Placement {
                mac: "02:00:00:00:00:02".into(),
                ip: "10.0.0.2".parse().unwrap(),
                udp_port: 41000,
                port: 2
            }
        );
        assert_eq!(p[1].port, 1);
    }

    #[test]
    fn the_spec_wins_over_the_map() {
        let m = PortMap::parse(MAP).unwrap();
        let mut j = job(&["10.0.0.9:5"]);
        assert!(matches!(
            m.place(&j),
            Err(PortMapError::Worker { rank: 0, .. })
        ));
        j.workers[0].mac = Some("02:00:00:00:00:09".into());
        j.workers[0].port = Some(9);
        assert_eq!(m.place(&j).unwrap()[0].port, 9);
    }

    #[test]
    fn bad_addresses_and_maps() {
        let m = PortMap::parse(MAP).unwrap();
        for a in ["0.0.0.0:5", "[fd00::1]:5"] {
            let e = m.place(&job(&[a])).unwrap_err();
            assert!(matches!(e, PortMapError::Worker { .. }), "{a}: {e}");
        }
        assert!(PortMap::parse(r#"{"hosts":[{"ip":"10.0.0.1","mac":"x","port":1}]}"#).is_err());
        assert!(PortMap::parse(
            r#"{"hosts":[{"ip":"10.0.0.1","mac":"02:00:00:00:00:01","port":511}]}"#
        )
        .is_err());
        let twice = r#"{"hosts":[{"ip":"10.0.0.1","mac":"02:00:00:00:00:01","port":1},
                                 {"ip":"10.0.0.1","mac":"02:00:00:00:00:02","port":2}]}"#;
        assert!(PortMap::parse(twice).unwrap_err().contains("twice"));
        assert!(PortMap::parse("{").is_err());
    }
}
