//! QUIC client certificates (`QuicSettings::client_allow`) over loopback: workers with allowed
//! certificates use control streams and datagrams as before; a client without a certificate or
//! with another one fails the handshake, is counted, and reaches neither the control plane nor
//! the data path; without an allow-list any client is served, as before.

mod common;
use common::*;

use std::time::{Duration, Instant};

use sketchreduce_quic::{ClientAllowList, Identity};
use sketchreduce_switch::{spawn_switch, QuicSettings, SwitchConfig, SwitchHandle};
use sketchreduce_wire::control::{Request, Response};
use sketchreduce_wire::packet::build;
use sketchreduce_wire::{Header, JobSpec, Kind, Packet, WorkerSpec};

fn switch(tag: &str, allowed: &[&Identity]) -> (SwitchHandle, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("sr-switch-qcc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut sc = SwitchConfig::loopback(1, 16);
    sc.quic = Some(QuicSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_dir: dir.clone(),
        client_allow: (!allowed.is_empty()).then(|| {
            ClientAllowList::new(
                allowed
                    .iter()
                    .map(|id| sketchreduce_quic::fingerprint_bytes(&id.cert_der)),
            )
            .unwrap()
        }),
    });
    (spawn_switch(sc).unwrap(), dir)
}

/// Connects to the switch, presenting `id` if given. A TLS 1.3 client finishes its side of the
/// handshake before the server has checked the client certificate, so a refused client may
/// still get a connection here; it is closed by the switch right after.
async fn client(
    sw: &SwitchHandle,
    id: Option<&Identity>,
) -> (quinn::Endpoint, Result<quinn::Connection, String>) {
    let fp = sw.fingerprint().unwrap();
    let cfg = match id {
        Some(id) => sketchreduce_quic::client_config_with_identity(fp, id).unwrap(),
        None => sketchreduce_quic::client_config(fp).unwrap(),
    };
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let conn = ep
        .connect(sw.quic_addr().unwrap(), sketchreduce_quic::SERVER_NAME)
        .unwrap()
        .await
        .map_err(|e| e.to_string());
    (ep, conn)
}

fn data(epoch: u32, rank: u8, v: u32) -> Vec<u8> {
    let h = Header {
        lanes: 32,
        ..Header::request(Kind::Data, 7, epoch, rank, 0, 0)
    };
    let mut b = vec![0u8; h.packet_len()];
    build(&h, &[v; 32], &mut b).unwrap();
    b
}

/// Waits (bounded) for the switch to count `n` failed handshakes; the count is bumped by the
/// switch's connection task, which may run after the client already saw the close.
async fn handshake_failures_reach(sw: &SwitchHandle, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sw.quic_handshake_failures() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sw.quic_handshake_failures()
}

/// A refused client: its control request and its datagram reach nothing, and the switch
/// counts the failed handshake.
async fn assert_refused(sw: &SwitchHandle, id: Option<&Identity>, failures_before: u64) {
    let (ep, conn) = client(sw, id).await;
    if let Ok(c) = conn {
        let _ = c.send_datagram(data(1, 0, 1).into());
        let resp = sketchreduce_quic::control_call(&c, None, &Request::Info {}).await;
        assert!(resp.is_err(), "refused by the switch, got: {resp:?}");
    }
    assert_eq!(
        handshake_failures_reach(sw, failures_before + 1).await,
        failures_before + 1
    );
    assert_eq!(sw.core().counters().packets_in, 0);
    assert!(sw.plane().jobs().is_empty());
    ep.close(0u32.into(), b"");
}

#[test]
fn allowed_client_certificates_control_and_aggregate() {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (sw, dir) = switch("ok", &[&a, &b]);
    rt().block_on(async {
        let (e0, c0) = client(&sw, Some(&a)).await;
        let (e1, c1) = client(&sw, Some(&b)).await;
        let (c0, c1) = (c0.unwrap(), c1.unwrap());
        let spec = JobSpec {
            id: 7,
            epoch: 0,
            lanes: 32,
            slot_base: 0,
            slot_count: 1,
            workers: [&e0, &e1]
                .iter()
                .map(|e| WorkerSpec::at(e.local_addr().unwrap()))
                .collect(),
        };
        let epoch = create_and_join(&c0, &c1, spec).await;
        c0.send_datagram(data(epoch, 0, 5).into()).unwrap();
        c1.send_datagram(data(epoch, 1, 6).into()).unwrap();
        for c in [&c0, &c1] {
            let d = tokio::time::timeout(Duration::from_secs(5), c.read_datagram())
                .await
                .expect("result in time")
                .unwrap();
            let p = Packet::new_checked(&d[..]).unwrap();
            let h = Header::parse(&p).unwrap();
            assert_eq!((h.kind, h.count, h.bitmap), (Kind::Result, 2, 0b11));
            assert!(p.lanes().all(|x| x == 11));
        }
    });
    assert_eq!(sw.quic_handshake_failures(), 0);
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn client_without_certificate_is_refused() {
    let a = Identity::generate().unwrap();
    let (sw, dir) = switch("none", &[&a]);
    rt().block_on(async {
        assert_refused(&sw, None, 0).await;
        // The allowed worker still gets in afterwards.
        let (_e, c) = client(&sw, Some(&a)).await;
        let resp = sketchreduce_quic::control_call(&c.unwrap(), None, &Request::Info {}).await;
        assert!(matches!(resp, Ok(Response::Info(_))), "{resp:?}");
    });
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn client_with_another_certificate_is_refused() {
    let (a, stranger) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (sw, dir) = switch("other", &[&a]);
    rt().block_on(async {
        assert_refused(&sw, Some(&stranger), 0).await;
        // A certificate read from the switch's own directory is no worker's either.
        let own = sketchreduce_quic::load_or_create_identity(&dir).unwrap();
        assert_refused(&sw, Some(&own), 1).await;
    });
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_allow_list_any_client_is_served() {
    let a = Identity::generate().unwrap();
    let (sw, dir) = switch("off", &[]);
    rt().block_on(async {
        for id in [None, Some(&a)] {
            let (_e, c) = client(&sw, id).await;
            let resp = sketchreduce_quic::control_call(&c.unwrap(), None, &Request::Info {}).await;
            assert!(matches!(resp, Ok(Response::Info(_))), "{resp:?}");
        }
    });
    assert_eq!(sw.quic_handshake_failures(), 0);
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
