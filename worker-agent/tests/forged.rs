//! Off-path injection against workers: a sender that knows the job id, the epoch and the slot
//! layout (the worst case: it watched the wire) floods the workers with forged RESULTs and
//! NACKs from its own address. Workers accept results only from the switch's data ports, so
//! their sums stay exact and the forgeries are counted.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sketchreduce_agent::{bind_udp, Agent, AgentConfig, UdpTransport};
use sketchreduce_switch::{spawn_switch, SwitchConfig};
use sketchreduce_wire::packet::{build, NACK_UNKNOWN_JOB};
use sketchreduce_wire::{Header, JobSpec, Kind, Op, WorkerSpec};

#[test]
fn forged_results_from_elsewhere_are_ignored() {
    let sw = spawn_switch(SwitchConfig::loopback(1, 256)).unwrap();
    let socks: Vec<UdpSocket> = (0..2)
        .map(|_| bind_udp("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let spec = sw
        .create(JobSpec {
            id: 5,
            epoch: 0,
            lanes: 64,
            slot_base: 0,
            slot_count: 16,
            workers: socks
                .iter()
                .map(|s| WorkerSpec::at(s.local_addr().unwrap()))
                .collect(),
        })
        .unwrap();
    let targets: Vec<_> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
    let stop = AtomicBool::new(false);
    let results = std::thread::scope(|s| {
        // The attacker: every slot, rounds 0..8, every chunk offset a window could use, a
        // complete-looking RESULT (count 2, full bitmap) of garbage, plus NACKs.
        let attacker = s.spawn(|| {
            let evil = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut buf = vec![0u8; 32 + 64 * 4];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for slot in 0..16u32 {
                    for round in 0..8u32 {
                        let mut h = Header {
                            kind: Kind::Result,
                            op: Op::Add,
                            rank: 0,
                            job: 5,
                            lanes: 64,
                            epoch: spec.epoch,
                            slot,
                            set: (round & 1) as u8,
                            count: 2,
                            flags: 0,
                            round,
                            offset: slot + 16 * round,
                            bitmap: 0b11,
                        };
                        let n = build(&h, &[0xdead_beef; 64], &mut buf).unwrap();
                        for t in &targets {
                            let _ = evil.send_to(&buf[..n], t);
                        }
                        h.kind = Kind::Status;
                        h.lanes = 0;
                        h.count = 0;
                        h.bitmap = 0;
                        h.flags = NACK_UNKNOWN_JOB;
                        let n = build(&h, &[], &mut buf).unwrap();
                        for t in &targets {
                            let _ = evil.send_to(&buf[..n], t);
                        }
                        sent += 2;
                    }
                }
            }
            sent
        });
        let workers: Vec<_> = socks
            .into_iter()
            .enumerate()
            .map(|(r, sock)| {
                let spec = spec.clone();
                let control = sw.control_addr();
                s.spawn(move || {
                    let t = UdpTransport::new(sock, control).unwrap();
                    let cfg = AgentConfig {
                        register: false,
                        ..AgentConfig::default()
                    };
                    let mut a = Agent::new(t, &spec, r as u8, cfg).unwrap();
                    let mut sums = Vec::new();
                    for it in 0..5u64 {
                        let v: Vec<f32> = (0..3000).map(|i| ((i * (r + 1)) % 7) as f32).collect();
                        let red = a.all_reduce(it, &v).unwrap();
                        sums.push(red.dense());
                    }
                    (sums, a.transport().foreign_datagrams())
                })
            })
            .collect();
        let out: Vec<_> = workers.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        let sent = attacker.join().unwrap();
        assert!(sent > 0);
        out
    });
    let want: Vec<f32> = (0..3000)
        .map(|i| ((i % 7) + ((i * 2) % 7)) as f32)
        .collect();
    for (r, (sums, foreign)) in results.into_iter().enumerate() {
        for s in sums {
            assert_eq!(s, want, "rank {r}");
        }
        assert!(foreign > 0, "rank {r} saw no forged datagram");
    }
    std::thread::sleep(Duration::from_millis(10));
}
