//! Control protocol v2: the messages, framing and limits of the switch's control endpoint
//! (TCP, default `127.0.0.1:39440`; the same frames on a QUIC bidirectional stream).
//!
//! Language-neutral on purpose (docs/wire.md has the byte-by-byte description and an example
//! exchange): every frame is a 4-byte big-endian length `n` (1 ≤ n ≤ [`MAX_FRAME`]) followed by
//! `n` bytes of UTF-8 JSON holding one object. The server speaks first with a [`Hello`]; each
//! request and response is an [`Envelope`] whose `body` is the JSON text of a [`Request`] or
//! [`Response`] and whose `mac` is an HMAC-SHA256 over a context string, the hello's nonce, the
//! sequence number and the body (computed in `sketchreduce-control`, which holds the server
//! logic and the client).
//!
//! This module only describes the protocol: types, constants, and pure frame helpers.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::job::JobSpec;

/// The `hello` string of protocol v2.
pub const PROTOCOL: &str = "sketchreduce-control/2";
/// Largest frame body, bytes. Anything longer (or an empty frame) closes the connection.
pub const MAX_FRAME: usize = 65_536;
/// A peer must deliver each frame (from its first byte to its last) within this time.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection may stay idle (between frames) at most this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection lives at most this long, however busy (clients reconnect), so a few clients
/// cannot hold the [`MAX_CONNECTIONS`] places forever.
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(600);
/// Most control connections a server keeps open (TCP and QUIC streams together); more are
/// closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Lease of a job created through the control endpoint, unless the request gives another.
pub const DEFAULT_LEASE_MS: u64 = 60_000;
/// Longest lease a `create` may ask for (one day). 0 (no lease) is only for static jobs.
pub const MAX_LEASE_MS: u64 = 86_400_000;
/// Jobs a switch holds by default (its `max_jobs` capability).
pub const DEFAULT_MAX_JOBS: usize = 64;
/// Hex digits of the hello's nonce (16 random bytes).
pub const NONCE_HEX_LEN: usize = 32;
/// Hex digits of a MAC (HMAC-SHA256).
pub const MAC_HEX_LEN: usize = 64;
/// Shortest secret accepted, bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Context prefix of a request MAC's input.
pub const REQUEST_CONTEXT: &str = "sketchreduce/2 request\n";
/// Context prefix of a response MAC's input.
pub const RESPONSE_CONTEXT: &str = "sketchreduce/2 response\n";
/// Environment variable naming the secret file (switch and workers).
pub const SECRET_FILE_ENV: &str = "SKETCHREDUCE_SECRET_FILE";
/// Environment variable holding the secret itself (switch and workers).
pub const SECRET_ENV: &str = "SKETCHREDUCE_SECRET";
/// Protocol version reported by `info`.
pub const VERSION: u32 = 2;

/// Why the switch dropped a packet. Both switches have one counter index per reason, in this
/// order (`reason as usize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum DropReason {
    /// Not a valid packet: length, version, kind, op, set, lane presence, request flags,
    /// request set ≠ round & 1, or an IPv4 header with options.
    Malformed = 0,
    /// No job with that id.
    UnknownJob = 1,
    /// The job exists with another epoch.
    BadEpoch = 2,
    /// Rank not below the job's worker count.
    BadRank = 3,
    /// Slot outside the job's range.
    BadSlot = 4,
    /// DATA whose lane count differs from the job's.
    BadLanes = 5,
    /// A RESULT or STATUS sent to the switch.
    BadKind = 6,
    /// Retransmission of a contribution the slot already holds, before completion.
    Duplicate = 7,
    /// A contribution to a round the slot set has finished with, or an older one.
    Stale = 8,
    /// The datagram's source is not the rank's registered address.
    BadSource = 9,
}

impl DropReason {
    /// Number of reasons (size of the counter arrays).
    pub const COUNT: usize = 10;

    /// All reasons in counter-index order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::UnknownJob,
        DropReason::BadEpoch,
        DropReason::BadRank,
        DropReason::BadSlot,
        DropReason::BadLanes,
        DropReason::BadKind,
        DropReason::Duplicate,
        DropReason::Stale,
        DropReason::BadSource,
    ];

    /// A snake_case name for logs, JSON and P4 comments.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownJob => "unknown_job",
            DropReason::BadEpoch => "bad_epoch",
            DropReason::BadRank => "bad_rank",
            DropReason::BadSlot => "bad_slot",
            DropReason::BadLanes => "bad_lanes",
            DropReason::BadKind => "bad_kind",
            DropReason::Duplicate => "duplicate",
            DropReason::Stale => "stale",
            DropReason::BadSource => "bad_source",
        }
    }
}

/// Per-job counters (docs/wire.md, "Counters", defines each exactly).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCounters {
    /// DATA packets accepted into a slot (a first contribution, or combined).
    pub data_in: u64,
    /// Slot sets completed (each multicast once).
    pub completions: u64,
    /// RESULT datagrams sent by multicast (completions × workers).
    pub results_multicast: u64,
    /// RESULT datagrams unicast in answer to a retransmission after completion.
    pub results_unicast: u64,
    /// PROBE packets answered with a (non-NACK) STATUS.
    pub probes: u64,
    /// Drops attributed to this job, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
}

/// A snapshot of the switch's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// Datagrams received on the data path, valid or not.
    pub packets_in: u64,
    /// Datagrams sent (each multicast replica, unicast RESULT, STATUS, NACK STATUS).
    pub packets_out: u64,
    /// Drops not attributable to a registered job (malformed, unknown_job), indexed by
    /// `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
    /// Per registered job, sorted by id. JSON: `[{"job": id, "data_in": …, …}, …]`.
    #[serde(with = "job_list")]
    pub jobs: Vec<(u16, JobCounters)>,
}

impl Counters {
    /// The counters of job `id`, if it is registered.
    pub fn job(&self, id: u16) -> Option<&JobCounters> {
        self.jobs.iter().find(|(i, _)| *i == id).map(|(_, c)| c)
    }
}

/// JSON shape of [`Counters::jobs`]: a list of objects with the job id inline.
mod job_list {
    use super::JobCounters;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        job: u16,
        #[serde(flatten)]
        counters: JobCounters,
    }

    pub fn serialize<S: Serializer>(v: &[(u16, JobCounters)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&(job, counters)| Entry { job, counters }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(u16, JobCounters)>, D::Error> {
        let v = Vec::<Entry>::deserialize(d)?;
        Ok(v.into_iter().map(|e| (e.job, e.counters)).collect())
    }
}

/// What a switch is and can do (answer to [`Request::Info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Info {
    /// Control protocol version ([`VERSION`]).
    pub version: u32,
    /// First UDP data port.
    pub data_port: u16,
    /// Number of consecutive data ports; slot `s` goes to `data_port + s % data_ports`.
    pub data_ports: u16,
    /// Slots in the pool.
    pub slots: u32,
    /// Largest lane count a job may use on this switch.
    pub max_lanes: u16,
    /// Most workers per job (32).
    pub max_workers: u32,
    /// Most jobs at once.
    pub max_jobs: u32,
    /// Whether requests must carry a valid MAC.
    pub auth: bool,
}

/// First frame of every connection, from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL`].
    pub hello: String,
    /// 32 lowercase hex digits, fresh per connection: binds every MAC to this connection.
    pub nonce: String,
    /// Whether the server checks request MACs (and signs responses).
    pub auth: bool,
}

/// First frame of a QUIC control stream, from the client: `{"hello":"sketchreduce-control/2"}`.
/// A QUIC stream does not exist for the server until the client sends on it, so over QUIC the
/// client speaks first; the server then answers with its [`Hello`] as over TCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientHello {
    /// [`PROTOCOL`].
    pub hello: String,
}

/// A request or response frame: the body as a JSON string, its sequence number and MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// 1 for the first request of a connection, +1 per request; a response carries its
    /// request's number (0 if the request could not be read).
    pub seq: u64,
    /// JSON text of a [`Request`] or [`Response`].
    pub body: String,
    /// Lowercase hex HMAC-SHA256 (docs/wire.md); "" when auth is off.
    pub mac: String,
}

fn default_lease() -> u64 {
    DEFAULT_LEASE_MS
}

/// A control request (the body of a request [`Envelope`]), tagged by `"op"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Describe the switch. (Written `Info {}` so that unknown fields are refused.)
    Info {},
    /// Create a job under a fresh random epoch (its slot registers reset). An existing id is
    /// replaced (new epoch, reset) only with `replace`; else the answer is `exists`.
    Create {
        /// The job; its `epoch` field is ignored.
        spec: JobSpec,
        /// Replace an existing job with this id.
        #[serde(default)]
        replace: bool,
        /// Unregister the job after this long without an accepted DATA or PROBE
        /// (1..=[`MAX_LEASE_MS`]; default [`DEFAULT_LEASE_MS`]).
        #[serde(default = "default_lease")]
        lease_ms: u64,
    },
    /// The spec (with its epoch) of a registered job.
    Join {
        /// Job id.
        job: u16,
    },
    /// Remove a job, if it still has this epoch.
    Unregister {
        /// Job id.
        job: u16,
        /// The epoch the caller knows.
        epoch: u32,
    },
    /// Read every counter.
    Counters {},
}

/// Why a request was refused (`"error"` of a failed response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad MAC or sequence number; the server closes the connection.
    Unauthorized,
    /// Not a valid request (JSON, shape, field values out of range).
    BadRequest,
    /// `create` without `replace` for an id that is registered.
    Exists,
    /// The job was configured statically (job file) and cannot be replaced or unregistered
    /// through the control endpoint.
    Conflict,
    /// The job's slot range overlaps another job's.
    Overlap,
    /// No job with that id.
    UnknownJob,
    /// The job has another epoch.
    BadEpoch,
    /// A capacity limit: jobs ≥ max_jobs, connections.
    Limit,
    /// The job spec violates the switch's limits (workers, lanes, slots, addresses).
    Invalid,
    /// The switch failed to apply a valid request (e.g. its data plane refused an update).
    Internal,
}

impl ErrorKind {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Exists => "exists",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Overlap => "overlap",
            ErrorKind::UnknownJob => "unknown_job",
            ErrorKind::BadEpoch => "bad_epoch",
            ErrorKind::Limit => "limit",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A control response (the body of a response [`Envelope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `{"ok":true,"info":{…}}`
    Info(Info),
    /// `{"ok":true,"epoch":N}` (create)
    Created {
        /// The job's new epoch.
        epoch: u32,
    },
    /// `{"ok":true,"spec":{…}}` (join)
    Joined(JobSpec),
    /// `{"ok":true,"counters":{…}}`
    Counters(Counters),
    /// `{"ok":true}` (unregister)
    Done,
    /// `{"ok":false,"error":"<kind>","message":"…"}`
    Error {
        /// Machine-readable reason.
        kind: ErrorKind,
        /// Human-readable detail.
        message: String,
    },
}

/// The flat JSON object every response body is.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseJson {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    info: Option<Info>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<JobSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counters: Option<Counters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl Response {
    /// An error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }

    /// The JSON text of this response (a response body).
    pub fn to_json(&self) -> String {
        let mut j = ResponseJson {
            ok: true,
            info: None,
            epoch: None,
            spec: None,
            counters: None,
            error: None,
            message: None,
        };
        match self {
            Response::Info(i) => j.info = Some(*i),
            Response::Created { epoch } => j.epoch = Some(*epoch),
            Response::Joined(s) => j.spec = Some(s.clone()),
            Response::Counters(c) => j.counters = Some(c.clone()),
            Response::Done => {}
            Response::Error { kind, message } => {
                j.ok = false;
                j.error = Some(*kind);
                j.message = Some(message.clone());
            }
        }
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_string(&j).unwrap_or_else(|_| String::from(r#"{"ok":false}"#))
    }

    /// Parses a response body.
    pub fn from_json(body: &str) -> Result<Self, serde_json::Error> {
        let j: ResponseJson = serde_json::from_str(body)?;
        let bad = |m: &str| <serde_json::Error as serde::de::Error>::custom(m);
        if !j.ok {
            return Ok(Response::Error {
                kind: j
                    .error
                    .ok_or_else(|| bad("error response without \"error\""))?,
                message: j.message.unwrap_or_default(),
            });
        }
        Ok(match (j.info, j.epoch, j.spec, j.counters) {
            (Some(i), None, None, None) => Response::Info(i),
            (None, Some(e), None, None) => Response::Created { epoch: e },
            (None, None, Some(s), None) => Response::Joined(s),
            (None, None, None, Some(c)) => Response::Counters(c),
            (None, None, None, None) => Response::Done,
            _ => return Err(bad("response with more than one result field")),
        })
    }
}

/// Errors in framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A length prefix of 0 or above [`MAX_FRAME`].
    #[error("control frame length {0} is outside 1..={MAX_FRAME}")]
    Length(u64),
}

/// Checks a frame's 4-byte length prefix and returns the body length.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n == 0 || n > MAX_FRAME {
        return Err(FrameError::Length(n as u64));
    }
    Ok(n)
}

/// Appends one frame (length prefix + `json`) to `out`.
pub fn encode_frame(json: &str, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let n = json.len();
    if n == 0 || n > MAX_FRAME {
        return Err(FrameError::Length(n as u64));
    }
    out.extend_from_slice(&(n as u32).to_be_bytes());
    out.extend_from_slice(json.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::WorkerSpec;

    fn spec() -> JobSpec {
        JobSpec {
            id: 1,
            epoch: 305_419_896,
            lanes: 64,
            slot_base: 0,
            slot_count: 128,
            workers: vec![WorkerSpec::at("10.0.0.1:40000".parse().unwrap())],
        }
    }

    #[test]
    fn request_json_shapes() {
        let r: Request = serde_json::from_str(r#"{"op":"info"}"#).unwrap();
        assert_eq!(r, Request::Info {});
        assert_eq!(
            serde_json::to_string(&Request::Counters {}).unwrap(),
            r#"{"op":"counters"}"#
        );
        let r: Request = serde_json::from_str(
            r#"{"op":"create","spec":{"id":1,"lanes":64,"slot_base":0,"slot_count":128,
               "workers":[{"addr":"10.0.0.1:40000"}]}}"#,
        )
        .unwrap();
        match r {
            Request::Create {
                spec,
                replace,
                lease_ms,
            } => {
                assert_eq!(
                    (spec.epoch, replace, lease_ms),
                    (0, false, DEFAULT_LEASE_MS)
                );
            }
            other => panic!("{other:?}"),
        }
        let r: Request = serde_json::from_str(r#"{"op":"unregister","job":3,"epoch":9}"#).unwrap();
        assert_eq!(r, Request::Unregister { job: 3, epoch: 9 });
        assert_eq!(
            serde_json::to_string(&Request::Join { job: 4 }).unwrap(),
            r#"{"op":"join","job":4}"#
        );
        for bad in [
            r#"{"op":"format_disk"}"#,
            r#"{"op":"join"}"#,
            r#"{"op":"join","job":70000}"#,
            r#"{"op":"info","extra":1}"#,
            r#"[1,2]"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn response_json_roundtrip() {
        let info = Info {
            version: VERSION,
            data_port: 39424,
            data_ports: 16,
            slots: 4096,
            max_lanes: 2048,
            max_workers: 32,
            max_jobs: 64,
            auth: true,
        };
        let mut c = Counters {
            packets_in: 5,
            ..Default::default()
        };
        c.jobs.push((3, JobCounters::default()));
        for r in [
            Response::Info(info),
            Response::Created { epoch: 7 },
            Response::Joined(spec()),
            Response::Counters(c),
            Response::Done,
            Response::error(ErrorKind::Exists, "job 1 exists"),
        ] {
            let j = r.to_json();
            assert_eq!(Response::from_json(&j).unwrap(), r, "{j}");
        }
        assert_eq!(Response::Done.to_json(), r#"{"ok":true}"#);
        assert_eq!(
            Response::Created { epoch: 7 }.to_json(),
            r#"{"ok":true,"epoch":7}"#
        );
        assert_eq!(
            Response::error(ErrorKind::UnknownJob, "no job 9").to_json(),
            r#"{"ok":false,"error":"unknown_job","message":"no job 9"}"#
        );
        let counters = Response::Counters(Counters {
            jobs: vec![(3, JobCounters::default())],
            ..Default::default()
        })
        .to_json();
        assert!(
            counters.contains(r#""jobs":[{"job":3,"data_in":0"#),
            "{counters}"
        );
        assert!(Response::from_json(r#"{"ok":true,"epoch":1,"info":null,"spec":null}"#).is_ok());
        assert!(Response::from_json(r#"{"ok":false}"#).is_err());
    }

    #[test]
    fn frames() {
        let mut out = Vec::new();
        encode_frame(r#"{"op":"info"}"#, &mut out).unwrap();
        assert_eq!(&out[..4], &[0, 0, 0, 13]);
        assert_eq!(frame_len([0, 0, 0, 13]), Ok(13));
        assert_eq!(frame_len([0, 0, 0, 0]), Err(FrameError::Length(0)));
        assert_eq!(frame_len([0, 1, 0, 0]), Ok(MAX_FRAME));
        assert_eq!(frame_len([0, 1, 0, 1]), Err(FrameError::Length(65_537)));
        assert!(encode_frame("", &mut out).is_err());
        assert!(encode_frame(&"x".repeat(MAX_FRAME + 1), &mut out).is_err());
    }

    #[test]
    fn reason_indices_are_dense() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        assert_eq!(DropReason::BadEpoch as usize, 2);
        assert_eq!(DropReason::BadSource as usize, 9);
    }
}
