//! The switch process over real loopback UDP sockets: windowed workers, exact sums, loss
//! injection in both directions, several jobs at once, several data threads, control endpoint.

use std::time::Duration;

use sketchreduce_switch::bench::{run_aggregation, run_echo, WorkloadConfig};
use sketchreduce_switch::{spawn_switch, SwitchConfig};
use sketchreduce_wire::control::call;
use sketchreduce_wire::{ControlRequest, ControlResponse, DropReason, JobSpec, WorkerSpec};

fn cfg(workers: usize, window: u32, rounds: u32) -> WorkloadConfig {
    WorkloadConfig {
        workers,
        window,
        rounds,
        retransmit: Duration::from_millis(20),
        deadline: Duration::from_secs(40),
        socket_buffer: 1 << 20,
        ..Default::default()
    }
}

#[test]
fn workers_many_rounds_exact() {
    let sw = spawn_switch(SwitchConfig::loopback(2, 64)).unwrap();
    let c = cfg(4, 16, 200);
    let st = run_aggregation(&sw, &c).unwrap();
    assert!(st.exact(&c), "{st:?}");
    let counters = sw.shutdown();
    let j = counters.jobs.iter().map(|(_, j)| j).next();
    assert!(j.is_none(), "job unregistered after the run");
    assert_eq!(counters.drops[DropReason::Malformed as usize], 0);
    assert!(counters.packets_in >= 4 * 16 * 200);
}

#[test]
fn loss_both_directions_is_recovered_exactly() {
    let sw = spawn_switch(SwitchConfig::loopback(3, 64)).unwrap();
    let mut c = cfg(3, 8, 100);
    c.loss_ppm = 100_000; // 10 % of sends and 10 % of receives, in every worker
    c.seed = 42;
    c.lanes = 128;
    c.keep_job = true;
    let st = run_aggregation(&sw, &c).unwrap();
    assert!(st.exact(&c), "{st:?}");
    assert!(st.injected_losses > 100, "{st:?}");
    assert!(st.retransmits > 0, "{st:?}");
    // The switch answered retransmissions: duplicates before completion were dropped, and
    // results were unicast again after completion.
    let counters = sw.shutdown();
    let j = counters.jobs[0].1;
    assert_eq!(j.completions, 8 * 100);
    assert_eq!(j.results_multicast, 3 * 8 * 100);
    assert!(j.results_unicast > 0, "{j:?}");
    assert!(j.drops[DropReason::Duplicate as usize] > 0, "{j:?}");
    assert_eq!(j.data_in, 3 * 8 * 100, "each contribution counted once");
}

#[test]
fn heavy_loss_single_thread() {
    let sw = spawn_switch(SwitchConfig::loopback(1, 16)).unwrap();
    let mut c = cfg(2, 4, 60);
    c.loss_ppm = 300_000;
    c.seed = 7;
    c.job = 9;
    let st = run_aggregation(&sw, &c).unwrap();
    assert!(st.exact(&c), "{st:?}");
}

#[test]
fn concurrent_jobs_are_isolated() {
    let sw = spawn_switch(SwitchConfig::loopback(2, 64)).unwrap();
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            let mut c = cfg(3, 16, 100);
            c.job = 1;
            c.token = 111;
            c.slot_base = 0;
            (run_aggregation(&sw, &c).unwrap(), c)
        });
        let b = s.spawn(|| {
            let mut c = cfg(2, 16, 100);
            c.job = 2;
            c.token = 222;
            c.slot_base = 32;
            c.lanes = 256;
            (run_aggregation(&sw, &c).unwrap(), c)
        });
        for h in [a, b] {
            let (st, c) = h.join().unwrap();
            assert!(st.exact(&c), "job {}: {st:?}", c.job);
        }
    });
}

#[test]
fn control_endpoint() {
    let mut sc = SwitchConfig::loopback(4, 100);
    sc.stats_interval = Some(Duration::from_millis(50));
    let sw = spawn_switch(sc).unwrap();
    let t = Duration::from_secs(5);
    let ctl = sw.control_addr();
    match call(ctl, &ControlRequest::Info, t).unwrap() {
        ControlResponse::Info {
            data_port,
            data_ports,
            slots,
        } => {
            assert_eq!(data_port, sw.local_data_addr().port());
            assert_eq!(data_ports, 4);
            assert_eq!(slots, 100);
        }
        other => panic!("{other:?}"),
    }
    let spec = JobSpec {
        id: 3,
        token: 1,
        lanes: 32,
        slot_base: 0,
        slot_count: 10,
        workers: vec![WorkerSpec::at("127.0.0.1:9".parse().unwrap())],
    };
    assert_eq!(
        call(ctl, &ControlRequest::Register(spec.clone()), t).unwrap(),
        ControlResponse::Ok
    );
    assert_eq!(
        call(ctl, &ControlRequest::Register(spec.clone()), t).unwrap(),
        ControlResponse::Ok
    );
    let mut other = spec.clone();
    other.id = 4;
    assert!(matches!(
        call(ctl, &ControlRequest::Register(other), t).unwrap(),
        ControlResponse::Error(_)
    ));
    match call(ctl, &ControlRequest::Counters, t).unwrap() {
        ControlResponse::Counters(c) => assert_eq!(c.jobs.len(), 1),
        other => panic!("{other:?}"),
    }
    // Several requests on one connection.
    let mut s = std::net::TcpStream::connect(ctl).unwrap();
    for _ in 0..3 {
        sketchreduce_wire::control::write_frame(&mut s, &ControlRequest::Info).unwrap();
        let r: ControlResponse = sketchreduce_wire::control::read_frame(&mut s).unwrap();
        assert!(matches!(r, ControlResponse::Info { .. }));
    }
    drop(s);
    std::thread::sleep(Duration::from_millis(120)); // a periodic counters log
    assert_eq!(
        call(ctl, &ControlRequest::Unregister { job: 3 }, t).unwrap(),
        ControlResponse::Ok
    );
    assert!(matches!(
        call(ctl, &ControlRequest::Unregister { job: 3 }, t).unwrap(),
        ControlResponse::Error(_)
    ));
    sw.shutdown();
}

#[test]
fn misrouted_slots_and_garbage_over_udp() {
    let sw = spawn_switch(SwitchConfig::loopback(2, 8)).unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let spec = JobSpec {
        id: 1,
        token: 5,
        lanes: 32,
        slot_base: 0,
        slot_count: 8,
        workers: vec![WorkerSpec::at(sock.local_addr().unwrap())],
    };
    sw.register(spec).unwrap();
    sock.send_to(b"garbage", sw.local_data_addr()).unwrap();
    // Slot 1 belongs to port base+1 but is sent to base: still answered, from base.
    let h = sketchreduce_wire::Header {
        kind: sketchreduce_wire::Kind::Data,
        op: sketchreduce_wire::Op::Add,
        rank: 0,
        job: 1,
        lanes: 32,
        token: 5,
        slot: 1,
        set: 0,
        count: 0,
        round: 0,
        offset: 0,
        bitmap: 0,
    };
    let mut b = vec![0u8; h.packet_len()];
    sketchreduce_wire::packet::build(&h, &[3; 32], &mut b);
    sock.send_to(&b, sw.local_data_addr()).unwrap();
    let mut r = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut r).unwrap();
    assert_eq!(from, sw.local_data_addr());
    assert_eq!(n, b.len());
    assert_eq!(r[1], 2);
    let c = sw.shutdown();
    assert_eq!(c.drops[DropReason::Malformed as usize], 1);
}

#[test]
fn echo_baseline_runs() {
    let c = cfg(2, 8, 50);
    let (st, echoed) = run_echo([127, 0, 0, 1].into(), 2, 1 << 20, &c).unwrap();
    assert!(st.exact(&c), "{st:?}");
    assert!(echoed >= 2 * 8 * 50);
}
