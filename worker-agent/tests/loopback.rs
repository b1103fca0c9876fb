//! Real sockets on loopback against the in-process switch (switch-emu): 2, 4 and 8 workers,
//! UDP and QUIC, exact results; plus a stopped worker named by the others' errors.

mod common;
use common::reference;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sketchreduce_agent::{
    bind_udp, Agent, AgentConfig, AgentError, AggConfig, Lossy, QuicTransport, Transport,
    UdpTransport,
};
use sketchreduce_codec::synth::{generate, Pattern, SynthSpec};
use sketchreduce_switch::{spawn_switch, QuicSettings, SwitchConfig, SwitchHandle};
use sketchreduce_wire::{JobSpec, WorkerSpec};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Udp,
    Quic,
}

fn switch(quic: bool) -> SwitchHandle {
    let mut cfg = SwitchConfig::loopback(2, 1024);
    if quic {
        let dir =
            std::env::temp_dir().join(format!("sketchreduce-agent-test-{}", std::process::id()));
        cfg.quic = Some(QuicSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_dir: dir,
            client_allow: None,
        });
    }
    spawn_switch(cfg).expect("switch")
}

fn job(id: u16, socks: &[UdpSocket]) -> JobSpec {
    JobSpec {
        id,
        epoch: 0, // assigned by the switch (create or join)
        lanes: 256,
        slot_base: id as u32 * 64,
        slot_count: 64,
        workers: socks
            .iter()
            .map(|s| WorkerSpec::at(s.local_addr().unwrap()))
            .collect(),
    }
}

fn transport(
    kind: Kind,
    sw: &SwitchHandle,
    sock: UdpSocket,
    loss: f64,
    seed: u64,
) -> Box<dyn Transport + Send> {
    let t: Box<dyn Transport + Send> = match kind {
        Kind::Udp => Box::new(UdpTransport::new(sock, sw.control_addr()).unwrap()),
        Kind::Quic => Box::new(
            QuicTransport::connect(sock, sw.quic_addr().unwrap(), sw.fingerprint().unwrap())
                .unwrap(),
        ),
    };
    if loss > 0.0 {
        Box::new(Lossy::new(t, loss, seed))
    } else {
        t
    }
}

fn run(kind: Kind, n: usize, id: u16, loss: f64) {
    let sw = switch(kind == Kind::Quic);
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| bind_udp("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let spec = job(id, &socks);
    let iters = 2;
    let grads: Vec<Vec<Vec<f32>>> = (0..iters)
        .map(|it| {
            generate(&SynthSpec {
                dim: 300_000,
                workers: n,
                density: 0.01,
                overlap: 0.5,
                pattern: Pattern::Random,
                seed: 1000 + it as u64,
            })
            .unwrap()
        })
        .collect();
    let want: Vec<Vec<i64>> = grads.iter().map(|g| reference(g).1).collect();
    let ts: Vec<Box<dyn Transport + Send>> = socks
        .into_iter()
        .enumerate()
        .map(|(r, s)| transport(kind, &sw, s, loss, r as u64 + 1))
        .collect();
    std::thread::scope(|sc| {
        let handles: Vec<_> = ts
            .into_iter()
            .enumerate()
            .map(|(r, t)| {
                let spec = spec.clone();
                let grads = &grads;
                let want = &want;
                sc.spawn(move || {
                    let cfg = AgentConfig {
                        agg: AggConfig::with_timeout(Duration::from_secs(20)),
                        ..Default::default()
                    };
                    let mut a = Agent::new(t, &spec, r as u8, cfg).unwrap();
                    for it in 0..iters {
                        let red = a
                            .all_reduce(42, &grads[it][r])
                            .unwrap_or_else(|e| panic!("{kind:?} n={n} rank {r} iter {it}: {e}"));
                        let mut got = vec![0i64; want[it].len()];
                        red.to_dense_sums(&mut got).unwrap();
                        assert!(
                            got == want[it],
                            "{kind:?} n={n} rank {r} iter {it}: sums differ"
                        );
                    }
                    a.stats()
                })
            })
            .collect();
        for h in handles {
            let st = h.join().unwrap();
            assert_eq!(st.all_reduces, iters as u64);
        }
    });
    drop(sw);
}

#[test]
fn udp_2_4_8_workers_exact() {
    run(Kind::Udp, 2, 1, 0.0);
    run(Kind::Udp, 4, 2, 0.02);
    run(Kind::Udp, 8, 3, 0.0);
}

#[test]
fn quic_2_4_8_workers_exact() {
    run(Kind::Quic, 2, 1, 0.0);
    run(Kind::Quic, 4, 2, 0.02);
    run(Kind::Quic, 8, 3, 0.0);
}

#[test]
fn stopped_worker_is_named() {
    let sw = switch(false);
    let n = 3;
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| bind_udp("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let spec = job(5, &socks);
    let timeout = Duration::from_millis(1500);
    let ts: Vec<_> = socks
        .into_iter()
        .map(|s| UdpTransport::new(s, sw.control_addr()).unwrap())
        .collect();
    std::thread::scope(|sc| {
        let hs: Vec<_> = ts
            .into_iter()
            .enumerate()
            .map(|(r, t)| {
                let spec = spec.clone();
                sc.spawn(move || {
                    let cfg = AgentConfig {
                        agg: AggConfig::with_timeout(timeout),
                        ..Default::default()
                    };
                    let mut a = Agent::new(t, &spec, r as u8, cfg).unwrap();
                    let g = vec![0.5f32; 10_000];
                    a.all_reduce(1, &g).unwrap();
                    if r == 1 {
                        return None; // rank 1 stops here
                    }
                    let t0 = Instant::now();
                    let e = a.all_reduce(1, &g).unwrap_err();
                    Some((e, t0.elapsed()))
                })
            })
            .collect();
        for (r, h) in hs.into_iter().enumerate() {
            if let Some((e, took)) = h.join().unwrap() {
                assert!(
                    took < timeout + Duration::from_millis(500),
                    "rank {r} took {took:?}"
                );
                match &e {
                    AgentError::SlotTimeout {
                        job: 5, missing, ..
                    } => {
                        assert_eq!(missing.as_deref(), Some(&[1u8][..]), "{e}")
                    }
                    other => panic!("rank {r}: {other}"),
                }
            }
        }
    });
}
