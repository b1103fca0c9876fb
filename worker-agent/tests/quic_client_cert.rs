//! The agent's QUIC transport presenting a client certificate (`QuicConfig::identity`) to a
//! switch that requires one: allowed workers all-reduce exactly; a worker without a
//! certificate cannot register.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sketchreduce_agent::{bind_udp, Agent, AgentConfig, AggConfig, QuicConfig, QuicTransport};
use sketchreduce_quic::{fingerprint_bytes, ClientAllowList, Identity};
use sketchreduce_switch::{spawn_switch, QuicSettings, SwitchConfig, SwitchHandle};
use sketchreduce_wire::{JobSpec, WorkerSpec};

fn switch(tag: &str, allowed: &[&Identity]) -> (SwitchHandle, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("sr-agent-qcc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = SwitchConfig::loopback(1, 64);
    cfg.quic = Some(QuicSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert_dir: dir.clone(),
        client_allow: Some(
            ClientAllowList::new(allowed.iter().map(|id| fingerprint_bytes(&id.cert_der))).unwrap(),
        ),
    });
    (spawn_switch(cfg).unwrap(), dir)
}

fn spec(socks: &[UdpSocket]) -> JobSpec {
    JobSpec {
        id: 3,
        epoch: 0,
        lanes: 256,
        slot_base: 0,
        slot_count: 16,
        workers: socks
            .iter()
            .map(|s| WorkerSpec::at(s.local_addr().unwrap()))
            .collect(),
    }
}

fn connect(sw: &SwitchHandle, sock: UdpSocket, id: Option<&Identity>) -> QuicTransport {
    QuicTransport::connect_with(
        sock,
        &QuicConfig {
            server: sw.quic_addr().unwrap(),
            fingerprint: sw.fingerprint().unwrap().to_string(),
            identity: id.cloned(),
        },
    )
    .unwrap()
}

fn agent_config() -> AgentConfig {
    AgentConfig {
        agg: AggConfig::with_timeout(Duration::from_secs(10)),
        ..Default::default()
    }
}

#[test]
fn workers_with_allowed_certificates_all_reduce() {
    let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
    let (sw, dir) = switch("ok", &[&ids[0], &ids[1]]);
    let socks: Vec<UdpSocket> = (0..2)
        .map(|_| bind_udp("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let spec = spec(&socks);
    let ts: Vec<QuicTransport> = socks
        .into_iter()
        .zip(&ids)
        .map(|(s, id)| connect(&sw, s, Some(id)))
        .collect();
    // Rank r contributes r + 1 at every fifth position: the sum is 3 there, 0 elsewhere.
    let n = 10_000;
    std::thread::scope(|sc| {
        let hs: Vec<_> = ts
            .into_iter()
            .enumerate()
            .map(|(r, t)| {
                let spec = spec.clone();
                sc.spawn(move || {
                    let mut a = Agent::new(t, &spec, r as u8, agent_config()).unwrap();
                    let g: Vec<f32> = (0..n)
                        .map(|i| if i % 5 == 0 { (r + 1) as f32 } else { 0.0 })
                        .collect();
                    let red = a.all_reduce(1, &g).unwrap();
                    let mut out = vec![0f32; n];
                    red.to_dense(&mut out).unwrap();
                    out
                })
            })
            .collect();
        for h in hs {
            let out = h.join().unwrap();
            for (i, v) in out.iter().enumerate() {
                assert_eq!(*v, if i % 5 == 0 { 3.0 } else { 0.0 }, "position {i}");
            }
        }
    });
    assert_eq!(sw.quic_handshake_failures(), 0);
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn worker_without_certificate_cannot_register() {
    let allowed = Identity::generate().unwrap();
    let (sw, dir) = switch("none", &[&allowed]);
    let socks: Vec<UdpSocket> = (0..1)
        .map(|_| bind_udp("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let spec = spec(&socks);
    let sock = socks.into_iter().next().unwrap();
    // The client's half of the handshake may complete; the switch's refusal then fails the
    // first control request (create), so nothing is registered.
    let err = QuicTransport::connect_with(
        sock,
        &QuicConfig {
            server: sw.quic_addr().unwrap(),
            fingerprint: sw.fingerprint().unwrap().to_string(),
            identity: None,
        },
    )
    .and_then(|t| Agent::new(t, &spec, 0, agent_config()).map(|_| ()))
    .unwrap_err();
    // The reason reaches the user: the switch aborted the TLS handshake.
    assert!(err.to_string().contains("handshake failed"), "{err}");
    assert!(sw.plane().jobs().is_empty());
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
