//! The switch process over real loopback UDP sockets: windowed workers, exact sums, loss
//! injection in both directions, several jobs at once, several data threads; IPv4 options,
//! off-path injection and oversized datagrams on real sockets.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use sketchreduce_switch::bench::{run_aggregation, run_echo, WorkloadConfig};
use sketchreduce_switch::{spawn_switch, SwitchConfig, SwitchHandle};
use sketchreduce_wire::packet::build;
use sketchreduce_wire::{DropReason, Header, JobSpec, Kind, Packet, WorkerSpec};

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
            c.slot_base = 0;
            (run_aggregation(&sw, &c).unwrap(), c)
        });
        let b = s.spawn(|| {
            let mut c = cfg(2, 16, 100);
            c.job = 2;
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
fn misrouted_slots_and_garbage_over_udp() {
    let sw = spawn_switch(SwitchConfig::loopback(2, 8)).unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let spec = sw
        .create(spec_for(1, 32, &[sock.local_addr().unwrap()]))
        .unwrap();
    sock.send_to(b"garbage", sw.local_data_addr()).unwrap();
    // Slot 1 belongs to port base+1 but is sent to base: still answered, from base.
    let b = data(&spec, 0, 1, &[3; 32]);
    sock.send_to(&b, sw.local_data_addr()).unwrap();
    let mut r = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut r).unwrap();
    assert_eq!(from, sw.local_data_addr());
    assert_eq!(n, b.len());
    assert_eq!(r[1], 2);
    let c = sw.shutdown();
    assert_eq!(c.drops[DropReason::Malformed as usize], 1);
}

fn spec_for(id: u16, lanes: u16, addrs: &[SocketAddr]) -> JobSpec {
    JobSpec {
        id,
        epoch: 0,
        lanes,
        slot_base: 0,
        slot_count: 8,
        workers: addrs.iter().map(|a| WorkerSpec::at(*a)).collect(),
    }
}

fn data(j: &JobSpec, rank: u8, slot: u32, lanes: &[u32]) -> Vec<u8> {
    let h = Header {
        lanes: lanes.len() as u16,
        ..Header::request(Kind::Data, j.id, j.epoch, rank, slot, 0)
    };
    let mut b = vec![0u8; h.packet_len()];
    build(&h, lanes, &mut b).unwrap();
    b
}

/// Waits until the switch has received `n` datagrams (the data path is asynchronous).
fn wait_packets_in(sw: &SwitchHandle, n: u64) -> sketchreduce_wire::Counters {
    let t = Instant::now();
    loop {
        let c = sw.counters();
        if c.packets_in >= n || t.elapsed() > Duration::from_secs(10) {
            return c;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// docs/wire.md: a datagram whose IPv4 header has options (IHL ≠ 5) is malformed, counted in
/// packets_in and the global malformed drops. A real datagram with IP options (NOP, NOP, NOP,
/// EOL, set with setsockopt(IP_OPTIONS) on the sending socket) over loopback.
#[test]
fn ipv4_options_are_malformed() {
    let sw = spawn_switch(SwitchConfig::loopback(1, 8)).unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let spec = sw
        .create(spec_for(1, 32, &[sock.local_addr().unwrap()]))
        .unwrap();
    let opts: [u8; 4] = [1, 1, 1, 0]; // NOP NOP NOP EOL: IHL 6
                                      // SAFETY: setsockopt with a 4-byte option buffer on a valid socket.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            opts.as_ptr() as *const libc::c_void,
            opts.len() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
    // A valid, complete (1-worker) DATA packet: without options it would produce a RESULT.
    sock.send_to(&data(&spec, 0, 0, &[5; 32]), sw.local_data_addr())
        .unwrap();
    let c = wait_packets_in(&sw, 1);
    assert_eq!(c.packets_in, 1);
    assert_eq!(c.drops[DropReason::Malformed as usize], 1);
    assert_eq!(c.job(1).unwrap().data_in, 0);
    let mut buf = [0u8; 64];
    assert!(sock.recv_from(&mut buf).is_err(), "no RESULT for it");
    // The same packet without options is accepted.
    // SAFETY: an empty option list clears the options.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            std::ptr::null(),
            0,
        )
    };
    assert_eq!(r, 0);
    sock.send_to(&data(&spec, 0, 0, &[5; 32]), sw.local_data_addr())
        .unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = sock.recv_from(&mut buf).expect("RESULT");
    assert_eq!(n, 32 + 128);
    let c = sw.shutdown();
    assert_eq!(c.packets_in, 2);
    assert_eq!(c.drops[DropReason::Malformed as usize], 1);
    assert_eq!(c.job(1).unwrap().data_in, 1);
}

/// Off-path injection over real UDP: right job, epoch, rank and slot, but from a socket that
/// is not the rank's registered address: bad_source, no register changes, no reply.
#[test]
fn off_path_injection_over_udp_is_bad_source() {
    let sw = spawn_switch(SwitchConfig::loopback(1, 8)).unwrap();
    let w0 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let w1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let evil = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&w0, &w1, &evil] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let spec = sw
        .create(spec_for(
            1,
            32,
            &[w0.local_addr().unwrap(), w1.local_addr().unwrap()],
        ))
        .unwrap();
    evil.send_to(&data(&spec, 0, 2, &[666; 32]), sw.local_data_addr())
        .unwrap();
    let mut p = data(&spec, 1, 2, &[]);
    p[1] = Kind::Probe as u8;
    evil.send_to(&p, sw.local_data_addr()).unwrap();
    let c = wait_packets_in(&sw, 2);
    assert_eq!(
        c.job(1).unwrap().drops[DropReason::BadSource as usize],
        2,
        "{c:?}"
    );
    assert_eq!(sw.core().shard(0).slot_set(2, 0).unwrap().1, 0);
    w0.send_to(&data(&spec, 0, 2, &[1; 32]), sw.local_data_addr())
        .unwrap();
    w1.send_to(&data(&spec, 1, 2, &[2; 32]), sw.local_data_addr())
        .unwrap();
    let mut buf = [0u8; 256];
    for w in [&w0, &w1] {
        let (n, _) = w.recv_from(&mut buf).unwrap();
        let p = Packet::new_checked(&buf[..n]).unwrap();
        assert!(p.lanes().all(|x| x == 3), "1 + 2, not 666 + 2");
    }
    evil.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        evil.recv_from(&mut buf).is_err(),
        "nothing for the injector"
    );
    sw.shutdown();
}

/// A datagram longer than the largest packet (4096 lanes) is truncated by the receive buffer
/// and counted malformed, whether or not its job exists (docs/wire.md, lane counts).
#[test]
fn oversized_lane_count_is_malformed() {
    let sw = spawn_switch(SwitchConfig::loopback(1, 8)).unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let spec = sw
        .create(spec_for(1, 64, &[sock.local_addr().unwrap()]))
        .unwrap();
    sock.send_to(&data(&spec, 0, 0, &vec![1; 4096]), sw.local_data_addr())
        .unwrap();
    let c = wait_packets_in(&sw, 1);
    assert_eq!(c.drops[DropReason::Malformed as usize], 1);
    assert_eq!(c.job(1).unwrap().drops, [0; DropReason::COUNT]);
    sw.shutdown();
}

#[test]
fn echo_baseline_runs() {
    let c = cfg(2, 8, 50);
    let (st, echoed) = run_echo([127, 0, 0, 1].into(), 2, 1 << 20, &c).unwrap();
    assert!(st.exact(&c), "{st:?}");
    assert!(echoed >= 2 * 8 * 50);
}
