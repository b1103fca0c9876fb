//! QUIC loopback: workers with quinn clients (pinned fingerprint) aggregate through the
//! switch's QUIC endpoint; a wrong fingerprint is refused; QUIC and UDP workers mix.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sketchreduce_switch::{spawn_switch, QuicSettings, SwitchConfig, SwitchHandle};
use sketchreduce_wire::control::{Request, Response};
use sketchreduce_wire::packet::build;
use sketchreduce_wire::{Header, JobSpec, Kind, Packet, WorkerSpec};

fn switch(tag: &str) -> (SwitchHandle, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("sr-switch-quic-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut sc = SwitchConfig::loopback(2, 16);
    sc.quic = Some(QuicSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_dir: dir.clone(),
        client_allow: None,
    });
    (spawn_switch(sc).unwrap(), dir)
}

fn data(epoch: u32, rank: u8, slot: u32, round: u32, v: u32) -> Vec<u8> {
    let h = Header {
        lanes: 32,
        offset: slot,
        ..Header::request(Kind::Data, 7, epoch, rank, slot, round)
    };
    let mut b = vec![0u8; h.packet_len()];
    build(&h, &[v; 32], &mut b).unwrap();
    b
}

fn spec(addrs: &[SocketAddr]) -> JobSpec {
    JobSpec {
        id: 7,
        epoch: 0,
        lanes: 32,
        slot_base: 0,
        slot_count: 4,
        workers: addrs.iter().map(|a| WorkerSpec::at(*a)).collect(),
    }
}

async fn client(
    sw: &SwitchHandle,
    fp: &str,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    ep.set_default_client_config(sketchreduce_quic::client_config(fp).map_err(|e| e.to_string())?);
    let conn = ep
        .connect(sw.quic_addr().unwrap(), sketchreduce_quic::SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok((ep, conn))
}

#[test]
fn two_quic_workers_aggregate() {
    let (sw, dir) = switch("two");
    let fp = sw.fingerprint().unwrap().to_string();
    assert_eq!(fp.len(), 64);
    rt().block_on(async {
        let (e0, c0) = client(&sw, &fp).await.unwrap();
        let (e1, c1) = client(&sw, &fp).await.unwrap();
        let addrs = [e0.local_addr().unwrap(), e1.local_addr().unwrap()];
        // Worker 0 creates the job, worker 1 joins it, over QUIC control streams.
        let epoch = create_and_join(&c0, &c1, spec(&addrs)).await;
        match sketchreduce_quic::control_call(&c0, None, &Request::Info {})
            .await
            .unwrap()
        {
            Response::Info(i) => assert_eq!((i.data_ports, i.slots, i.auth), (2, 16, false)),
            other => panic!("{other:?}"),
        }
        for round in 0..3u32 {
            for slot in 0..4u32 {
                for (r, c) in [&c0, &c1].into_iter().enumerate() {
                    let v = (r as u32 + 1) * 100 + round * 10 + slot;
                    c.send_datagram(data(epoch, r as u8, slot, round, v).into())
                        .unwrap();
                }
            }
            for c in [&c0, &c1] {
                let mut seen = [false; 4];
                for _ in 0..4 {
                    let d = tokio::time::timeout(Duration::from_secs(5), c.read_datagram())
                        .await
                        .expect("result in time")
                        .unwrap();
                    let p = Packet::new_checked(&d[..]).unwrap();
                    let h = Header::parse(&p).unwrap();
                    assert_eq!(
                        (h.kind, h.round, h.count, h.bitmap),
                        (Kind::Result, round, 2, 0b11)
                    );
                    let want = 300 + 2 * (round * 10 + h.slot);
                    assert!(p.lanes().all(|x| x == want));
                    seen[h.slot as usize] = true;
                }
                assert_eq!(seen, [true; 4]);
            }
        }
        match sketchreduce_quic::control_call(&c1, None, &Request::Counters {})
            .await
            .unwrap()
        {
            Response::Counters(c) => {
                assert_eq!(c.jobs[0].1.completions, 12);
                assert_eq!(c.jobs[0].1.results_multicast, 24);
            }
            other => panic!("{other:?}"),
        }
        c0.close(0u32.into(), b"");
        c1.close(0u32.into(), b"");
    });
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wrong_fingerprint_is_refused() {
    let (sw, dir) = switch("wrong");
    rt().block_on(async {
        let err = client(&sw, &"ab".repeat(32)).await.unwrap_err();
        assert!(!err.is_empty());
        assert!(sketchreduce_quic::client_config("nope").is_err());
        // The right one works.
        let fp = sw.fingerprint().unwrap().to_string();
        client(&sw, &fp).await.unwrap();
    });
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn quic_and_udp_workers_mix() {
    let (sw, dir) = switch("mix");
    let fp = sw.fingerprint().unwrap().to_string();
    let udp = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rt().block_on(async {
        let (e0, c0) = client(&sw, &fp).await.unwrap();
        let epoch = sw
            .create(spec(&[e0.local_addr().unwrap(), udp.local_addr().unwrap()]))
            .unwrap()
            .epoch;
        // Slot 1: QUIC worker first (the UDP worker's packet completes it on the UDP path and the
        // result goes to the QUIC worker as a datagram); slot 2: the reverse order.
        c0.send_datagram(data(epoch, 0, 1, 0, 5).into()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        udp.send_to(&data(epoch, 1, 1, 0, 6), sw.data_addr_for_slot(1))
            .unwrap();
        udp.send_to(&data(epoch, 1, 2, 0, 1), sw.data_addr_for_slot(2))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        c0.send_datagram(data(epoch, 0, 2, 0, 2).into()).unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let d = tokio::time::timeout(Duration::from_secs(5), c0.read_datagram())
                .await
                .unwrap()
                .unwrap();
            let p = Packet::new_checked(&d[..]).unwrap();
            got.push((Header::parse(&p).unwrap().slot, p.lane(0)));
        }
        got.sort();
        assert_eq!(got, vec![(1, 11), (2, 3)]);
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        for _ in 0..2 {
            let (n, from) = udp.recv_from(&mut buf).unwrap();
            let p = Packet::new_checked(&buf[..n]).unwrap();
            let h = Header::parse(&p).unwrap();
            assert_eq!(from, sw.data_addr_for_slot(h.slot));
            got.push((h.slot, p.lane(0)));
        }
        got.sort();
        assert_eq!(got, vec![(1, 11), (2, 3)]);
    });
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
