//! The control protocol's decoders: frame lengths (`wire::control`), request and response
//! envelopes through the sans-I/O sessions of `sketchreduce-control` down to the control plane
//! and a switch core, the client side's checks of hellos and responses, request and response
//! bodies, and job files.
//!
//! An input is `[mode, …]`; modes 1–4 read a sequence of frames (2-byte length each).
//! Properties: nothing panics; the server dispatches a request exactly when its envelope is
//! well formed, carries the next sequence number and (with a secret) a valid MAC, and closes
//! the connection exactly when one of those fails; every reply is a well-formed, authenticated
//! response envelope; the plane's jobs and the core's stay the same set; a client accepts a
//! response only if its MAC verifies; bodies and job files re-encode to themselves.

use crate::mutate::{put_chunk, Source};
use crate::{sig, variant, Harness};
use sketchreduce_control::auth::Secret;
use sketchreduce_control::{
    Backend, BackendError, BackendInfo, ClientSession, ControlPlane, PlaneConfig, ServerSession,
};
use sketchreduce_switch::SwitchCore;
use sketchreduce_wire::control::{
    encode_frame, frame_len, Envelope, Request, Response, MAX_FRAME, REQUEST_CONTEXT,
    RESPONSE_CONTEXT,
};
use sketchreduce_wire::{Counters, JobFile, JobSpec, WorkerSpec};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NONCE: &str = "00112233445566778899aabbccddeeff";
/// Pool and lane capability of the fuzzed switch core (registers of 256 KiB: the plane cares
/// about slot ranges and lane counts, not lane contents).
const POOL: u32 = 1024;
const MAX_LANES: u16 = 32;

/// A control-plane backend over an in-memory switch core.
struct CoreBackend(Mutex<SwitchCore>);

impl CoreBackend {
    fn core(&self) -> std::sync::MutexGuard<'_, SwitchCore> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for CoreBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            data_port: 39424,
            data_ports: 16,
            slots: POOL,
            max_lanes: MAX_LANES,
        }
    }
    fn create(&self, spec: &JobSpec) -> Result<(), BackendError> {
        self.core()
            .create(spec.clone())
            .map_err(|e| BackendError::Invalid(e.to_string()))
    }
    fn unregister(&self, id: u16) -> Result<(), BackendError> {
        self.core()
            .unregister(id)
            .map(|_| ())
            .map_err(|e| BackendError::Invalid(e.to_string()))
    }
    fn counters(&self) -> Result<Counters, BackendError> {
        Ok(self.core().counters())
    }
}

/// See the module documentation.
pub struct ControlHarness {
    secret: Arc<Secret>,
}

impl std::fmt::Debug for ControlHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlHarness")
    }
}

impl Default for ControlHarness {
    fn default() -> Self {
        Self::new()
    }
}

fn spec(id: u16, base: u32) -> JobSpec {
    JobSpec {
        id,
        epoch: 0,
        lanes: 32,
        slot_base: base,
        slot_count: 16,
        workers: (0..3)
            .map(|r| WorkerSpec::at(([10, 0, 0, r as u8 + 1], 40000).into()))
            .collect(),
    }
}

fn requests() -> Vec<Request> {
    vec![
        Request::Info {},
        Request::Create {
            spec: spec(1, 0),
            replace: false,
            lease_ms: 60_000,
        },
        Request::Join { job: 1 },
        Request::Create {
            spec: spec(2, 8),
            replace: false,
            lease_ms: 1,
        },
        Request::Create {
            spec: spec(1, 32),
            replace: true,
            lease_ms: 1000,
        },
        Request::Counters {},
        Request::Unregister { job: 1, epoch: 5 },
    ]
}

impl ControlHarness {
    /// A harness with a fixed secret.
    pub fn new() -> Self {
        ControlHarness {
            secret: Arc::new(Secret::new("fuzzing-control-secret").expect("long enough")),
        }
    }

    fn secret(&self, with: bool) -> Option<Arc<Secret>> {
        with.then(|| self.secret.clone())
    }

    /// Frames → server session → control plane → switch core.
    fn server(&self, src: &mut Source<'_>, with: bool) -> u64 {
        let secret = self.secret(with);
        let plane = ControlPlane::new(
            CoreBackend(Mutex::new(
                SwitchCore::try_new_shard(POOL, 0, 1, MAX_LANES).expect("small core"),
            )),
            PlaneConfig {
                max_jobs: 3,
                auth: with,
            },
        );
        let mut srv = ServerSession::with_nonce(secret.clone(), NONCE.into());
        let t0 = Instant::now();
        let mut now = t0;
        let mut next_seq = 1u64;
        let mut s = 0u64;
        while !src.is_empty() {
            // Time passes between frames (leases expire).
            now += Duration::from_millis(src.u8() as u64 * 16);
            let frame = src.chunk(MAX_FRAME + 8);
            // Independent expectation from the envelope.
            let env: Option<Envelope> = std::str::from_utf8(frame)
                .ok()
                .and_then(|t| serde_json::from_str(t).ok());
            let authentic = env.as_ref().is_some_and(|e| {
                e.seq == next_seq
                    && secret
                        .as_ref()
                        .is_none_or(|k| k.verify(REQUEST_CONTEXT, NONCE, e.seq, &e.body, &e.mac))
            });
            let body_ok = env
                .as_ref()
                .is_some_and(|e| serde_json::from_str::<Request>(&e.body).is_ok());
            let mut dispatched = false;
            let reply = srv.handle(frame, |req| {
                dispatched = true;
                plane.handle(req, now)
            });
            assert_eq!(
                dispatched,
                authentic && body_ok,
                "dispatch of {:?}",
                String::from_utf8_lossy(frame)
            );
            assert_eq!(
                reply.close,
                !authentic,
                "close after {:?}",
                String::from_utf8_lossy(frame)
            );
            // The reply is a well-formed response envelope, authenticated with the secret.
            let out: Envelope = serde_json::from_str(&reply.frame).expect("reply is an envelope");
            if let Some(k) = &secret {
                assert!(k.verify(RESPONSE_CONTEXT, NONCE, out.seq, &out.body, &out.mac));
            }
            let resp = Response::from_json(&out.body).expect("reply body is a response");
            s = sig(sig(s, variant(&resp)), reply.close as u64);
            // The registry and the data plane hold the same jobs under the same epochs.
            let mut a: Vec<(u16, u32)> = plane.jobs().iter().map(|j| (j.id, j.epoch)).collect();
            let mut b: Vec<(u16, u32)> = plane
                .backend()
                .core()
                .jobs()
                .map(|j| (j.id, j.epoch))
                .collect();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "plane and core disagree on the jobs");
            if reply.close {
                break;
            }
            next_seq += 1;
            let expired = plane.sweep(now);
            s = sig(s, expired.len() as u64);
        }
        s
    }

    /// Hello frame, then response frames, through a client session.
    fn client(&self, src: &mut Source<'_>, with: bool) -> u64 {
        let secret = self.secret(with);
        let hello = src.chunk(MAX_FRAME);
        let mut cli = match ClientSession::from_hello(hello, secret.clone()) {
            Ok(c) => c,
            Err(e) => return sig(10, variant(&e)),
        };
        let nonce: String = serde_json::from_slice::<serde_json::Value>(hello)
            .ok()
            .and_then(|v| v.get("nonce")?.as_str().map(String::from))
            .unwrap_or_default();
        let mut s = 11;
        while !src.is_empty() {
            let _ = cli.request(&Request::Info {});
            let frame = src.chunk(MAX_FRAME);
            let r = cli.response(frame);
            if let (Ok(_), Some(k)) = (&r, &secret) {
                let env: Envelope = serde_json::from_slice(frame).expect("accepted envelope");
                assert!(
                    k.verify(RESPONSE_CONTEXT, &nonce, env.seq, &env.body, &env.mac),
                    "client accepted an unauthenticated response"
                );
            }
            s = sig(s, variant(&r));
        }
        s
    }
}

impl Harness for ControlHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut f = Vec::new();
        let _ = encode_frame(r#"{"op":"info"}"#, &mut f);
        out.push([&[0u8][..], &f].concat());
        for with in [false, true] {
            let secret = self.secret(with);
            let srv = ServerSession::with_nonce(secret.clone(), NONCE.into());
            let hello = srv.hello();
            // Server: a session's worth of valid requests.
            let mut cli =
                ClientSession::from_hello(hello.as_bytes(), secret.clone()).expect("own hello");
            let mut input = vec![if with { 2 } else { 1 }];
            for r in requests() {
                input.push(3);
                put_chunk(&mut input, cli.request(&r).as_bytes());
            }
            out.push(input);
            // Client: the hello and responses to its requests.
            let mut srv = ServerSession::with_nonce(secret, NONCE.into());
            let mut cli =
                ClientSession::from_hello(hello.as_bytes(), self.secret(with)).expect("own hello");
            let mut input = vec![if with { 4 } else { 3 }];
            put_chunk(&mut input, hello.as_bytes());
            for r in [Response::Done, Response::Created { epoch: 9 }] {
                let req = cli.request(&Request::Info {});
                let reply = srv.handle(req.as_bytes(), |_| r.clone());
                put_chunk(&mut input, reply.frame.as_bytes());
            }
            out.push(input);
        }
        let file = JobFile {
            jobs: vec![spec(1, 0), spec(2, 100)],
        };
        out.push(
            [
                &[5u8][..],
                serde_json::to_string(&file).unwrap_or_default().as_bytes(),
            ]
            .concat(),
        );
        for r in requests() {
            out.push(
                [
                    &[6u8][..],
                    serde_json::to_string(&r).unwrap_or_default().as_bytes(),
                ]
                .concat(),
            );
        }
        out.push(
            [
                &[7u8][..],
                Response::Created { epoch: 1 }.to_json().as_bytes(),
            ]
            .concat(),
        );
        out
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        [
            "\"seq\":",
            "\"body\":",
            "\"mac\":",
            "\"op\":",
            "\"info\"",
            "\"create\"",
            "\"join\"",
            "\"unregister\"",
            "\"counters\"",
            "\"spec\":",
            "\"replace\":true",
            "\"lease_ms\":",
            "\"workers\":",
            "\"slot_base\":4294967295",
            "\"slot_count\":4294967295",
            "\"lanes\":2048",
            "\"id\":65535",
            "\"epoch\":",
            "\"addr\":\"10.0.0.1:1\"",
            "\"mac\":\"02:00:00:00:00:01\"",
            "\"port\":",
            "{",
            "}",
            "[",
            "]",
            ",",
            "\\\"",
            "\\u0000",
            "1e400",
            "-1",
            "18446744073709551616",
            "\"ok\":false",
            "\"error\":",
            "\"hello\":\"sketchreduce-control/2\"",
            "\"nonce\":",
            "\"auth\":true",
            NONCE,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn max_len(&self) -> usize {
        16 * 1024
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let mut src = Source::new(input);
        let mode = src.u8() % 8;
        let s = match mode {
            0 => {
                let p = src.bytes(4);
                let mut prefix = [0u8; 4];
                prefix[..p.len()].copy_from_slice(p);
                let n = u32::from_be_bytes(prefix) as usize;
                let r = frame_len(prefix);
                assert_eq!(r.is_ok(), (1..=MAX_FRAME).contains(&n));
                let text = String::from_utf8_lossy(src.rest());
                let mut out = Vec::new();
                if encode_frame(&text, &mut out).is_ok() {
                    let back = frame_len([out[0], out[1], out[2], out[3]]);
                    assert_eq!(back, Ok(text.len()));
                }
                variant(&r)
            }
            1 | 2 => self.server(&mut src, mode == 2),
            3 | 4 => self.client(&mut src, mode == 4),
            5 => match serde_json::from_slice::<JobFile>(src.rest()) {
                Err(_) => 50,
                Ok(f) => {
                    let mut s = 51;
                    for (i, j) in f.jobs.iter().enumerate() {
                        let v = j.validate(POOL, MAX_LANES);
                        if v.is_ok() {
                            assert_eq!(j.full_bitmap().count_ones() as usize, j.world());
                        }
                        for k in &f.jobs[..i] {
                            assert_eq!(j.overlaps(k), k.overlaps(j));
                        }
                        let text = serde_json::to_string(j).expect("serialise a spec");
                        assert_eq!(
                            serde_json::from_str::<JobSpec>(&text).ok().as_ref(),
                            Some(j)
                        );
                        s = sig(s, v.is_ok() as u64);
                    }
                    s
                }
            },
            6 => match serde_json::from_slice::<Request>(src.rest()) {
                Err(_) => 60,
                Ok(r) => {
                    let text = serde_json::to_string(&r).expect("serialise a request");
                    assert_eq!(serde_json::from_str::<Request>(&text).ok(), Some(r.clone()));
                    sig(61, variant(&r))
                }
            },
            _ => match std::str::from_utf8(src.rest()).map(Response::from_json) {
                Ok(Ok(r)) => {
                    assert_eq!(Response::from_json(&r.to_json()).ok(), Some(r.clone()));
                    sig(71, variant(&r))
                }
                _ => 70,
            },
        };
        sig(mode as u64, s)
    }
}
