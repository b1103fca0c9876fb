//! Attacks on the rendezvous and the ring's data ports by a process that can reach them (issue
//! 11): a length bomb, a slow-loris client, a stranger at a ring data port. Each one failed on
//! the code before the bounded, concurrent rendezvous (rank 0 aborted, was held past the
//! others' acknowledgement window, or took the stranger as a rank).

use sketchreduce_collectives::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn free_master_on(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

/// Starts rank `r` of `n` on its own thread.
fn start_rank(
    r: usize,
    n: usize,
    master: SocketAddr,
    tweak: impl FnOnce(Config) -> Config + Send + 'static,
) -> JoinHandle<Result<Communicator>> {
    std::thread::spawn(move || {
        let c = Config::new(r, n, master)
            .with_timeout(Duration::from_secs(10))
            .with_rendezvous_timeout(Duration::from_secs(30));
        Communicator::new(tweak(c))
    })
}

/// Connects to `addr` as soon as something listens there (rank 0 starting up).
fn connect_when_up(addr: SocketAddr) -> TcpStream {
    let t = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if t.elapsed() > Duration::from_secs(20) => panic!("{addr} never came up: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Every rank's communicator works: an all-reduce of `rank + 1` gives Σ (r + 1).
fn assert_ring_works(comms: Vec<Communicator>) {
    let n = comms.len();
    let want = (n * (n + 1) / 2) as f32;
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                s.spawn(move || {
                    let mut v = [(r + 1) as f32];
                    c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                    v
                })
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), [want]);
        }
    });
}

/// Reads until the peer closes the connection (EOF or reset); false if it stays open for
/// `within`.
fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn length_bomb_to_rank_0_is_refused_and_the_rendezvous_completes() {
    // Eight bytes announcing a 64 GiB hello used to make rank 0 allocate it (and abort).
    let master = free_master_on("127.0.0.1");
    let r0 = start_rank(0, 2, master, |c| c);
    let mut bomb = connect_when_up(master);
    bomb.write_all(&(1u64 << 36).to_le_bytes()).unwrap();
    let _ = bomb.write_all(b"SKR");
    assert!(
        closed_by_peer(&mut bomb, Duration::from_secs(20)),
        "rank 0 kept the bomb's connection open"
    );
    let r1 = start_rank(1, 2, master, |c| c);
    assert_ring_works(vec![
        r0.join().unwrap().unwrap(),
        r1.join().unwrap().unwrap(),
    ]);
}

#[test]
fn slow_loris_client_does_not_hold_up_the_rendezvous() {
    // A client that trickles one byte per second used to hold rank 0 (per-read timeouts only,
    // one client at a time) while the real ranks gave up waiting for its acknowledgement.
    let master = free_master_on("127.0.0.1");
    let r0 = start_rank(0, 3, master, |c| c);
    let mut loris = connect_when_up(master);
    loris
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let trickle = std::thread::spawn(move || {
        let frame: Vec<u8> = [&40u64.to_le_bytes()[..], &[b'x'; 40]].concat();
        for b in frame {
            if loris.write_all(&[b]).is_err() {
                return true; // rank 0 cut it off
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        closed_by_peer(&mut loris, Duration::from_secs(5))
    });
    // The real ranks arrive while the loris is connected and trickling.
    std::thread::sleep(Duration::from_millis(300));
    let others: Vec<_> = (1..3).map(|r| start_rank(r, 3, master, |c| c)).collect();
    let mut comms = vec![r0.join().unwrap().expect("rank 0")];
    for (r, h) in others.into_iter().enumerate() {
        comms.push(
            h.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("rank {}: {e}", r + 1)),
        );
    }
    assert_ring_works(comms);
    assert!(
        trickle.join().unwrap(),
        "rank 0 never closed the slow client"
    );
}

/// The listening TCP ports on `ip` (from /proc/net/tcp, as `ss -ltn` shows them to anyone on
/// the host).
fn listening_ports(ip: Ipv4Addr) -> Vec<u16> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, state) = (f.get(1)?, f.get(3)?);
            let (a, p) = addr.split_once(':')?;
            let a = u32::from_str_radix(a, 16).ok()?;
            let p = u16::from_str_radix(p, 16).ok()?;
            (*state == "0A" && Ipv4Addr::from(a.to_le_bytes()) == ip).then_some(p)
        })
        .collect()
}

/// Rank 0's ring data port, found the way a stranger on the host would: the listening port on
/// rank 0's address that is not MASTER_PORT.
fn data_port_of_rank_0(master: SocketAddr) -> SocketAddr {
    let IpAddr::V4(ip) = master.ip() else {
        unreachable!()
    };
    let t = Instant::now();
    loop {
        let ports: Vec<u16> = listening_ports(ip)
            .into_iter()
            .filter(|&p| p != master.port())
            .collect();
        if let [p] = ports[..] {
            return SocketAddr::new(master.ip(), p);
        }
        assert!(t.elapsed() < Duration::from_secs(20), "ports {ports:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stranger_at_the_data_port(secret: Option<&'static str>) {
    // An address of its own, so that rank 0's listeners are the only ones on it.
    let ip = if secret.is_some() {
        "127.77.0.2"
    } else {
        "127.77.0.1"
    };
    let master = free_master_on(ip);
    let with = move |c: Config| match secret {
        Some(s) => c.with_secret(Secret::new(s).unwrap()),
        None => c,
    };
    let r0 = start_rank(0, 2, master, with);
    let data = data_port_of_rank_0(master);
    // Rank 0's ring predecessor is rank 1, which has not even started: the strangers are
    // first in the queue. One claims to be rank 1 with the old link greeting (the config
    // fingerprint is computable by anyone); the other connects and stays silent.
    let mut forger = TcpStream::connect(data).unwrap();
    let fp = Config::new(1, 2, master).fingerprint();
    let link = format!("LINK\t1\t{fp}");
    forger
        .write_all(&(link.len() as u64).to_le_bytes())
        .unwrap();
    forger.write_all(link.as_bytes()).unwrap();
    let mut silent = TcpStream::connect(data).unwrap();
    let r1 = start_rank(1, 2, master, with);
    let comms = vec![r0.join().unwrap().unwrap(), r1.join().unwrap().unwrap()];
    assert_ring_works(comms);
    assert!(closed_by_peer(&mut forger, Duration::from_secs(20)));
    assert!(closed_by_peer(&mut silent, Duration::from_secs(20)));
}

#[test]
fn a_stranger_at_a_ring_data_port_cannot_take_a_ranks_place() {
    stranger_at_the_data_port(None);
}

#[test]
fn a_stranger_at_a_ring_data_port_cannot_take_a_ranks_place_with_a_secret() {
    stranger_at_the_data_port(Some("a-job-secret-of-enough-bytes"));
}

const SECRET: &str = "a-job-secret-of-enough-bytes";

fn with_secret(c: Config) -> Config {
    c.with_secret(Secret::new(SECRET).unwrap())
}

/// Reads one frame (8-byte little-endian length, payload) of at most 64 KiB.
fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    assert!(len <= 1 << 16, "frame of {len} bytes");
    let mut b = vec![0; len as usize];
    s.read_exact(&mut b)?;
    Ok(b)
}

fn write_frame(s: &mut TcpStream, b: &[u8]) {
    s.write_all(&(b.len() as u64).to_le_bytes()).unwrap();
    s.write_all(b).unwrap();
}

/// Sends `hello` (built for the challenge rank 0 sends) and returns rank 0's first answer,
/// or `None` if it closed the connection without one.
fn try_hello(
    master: SocketAddr,
    hello: impl FnOnce(&greeting::Challenge) -> Vec<u8>,
) -> Option<String> {
    let mut s = connect_when_up(master);
    let ch = greeting::Challenge::parse(&read_frame(&mut s).unwrap()).unwrap();
    assert!(ch.auth, "rank 0 has a secret");
    write_frame(&mut s, &hello(&ch));
    let answer = read_frame(&mut s)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    assert!(closed_by_peer(&mut s, Duration::from_secs(20)));
    answer
}

fn hello_as_rank_1(master: SocketAddr) -> greeting::Hello {
    let c = Config::new(1, 2, master);
    greeting::Hello {
        rank: 1,
        world: 2,
        fingerprint: c.fingerprint(),
        data_addr: "127.0.0.1:9".parse().unwrap(),
        nonce: "00112233445566778899aabbccddeeff".into(),
        settings: c.shared_settings(),
    }
}

#[test]
fn unauthenticated_hellos_are_refused_when_a_secret_is_set() {
    let master = free_master_on("127.0.0.1");
    let r0 = start_rank(0, 2, master, with_secret);
    let h = hello_as_rank_1(master);
    // Without a MAC, with another secret, and the previous protocol's hello (which any
    // process could compute, and which rank 0 used to accept as rank 1).
    let a = try_hello(master, |ch| h.seal(None, &ch.nonce)).unwrap();
    assert!(a.starts_with("SKR2\tREFUSED\t"), "{a}");
    let other = Secret::new("somebody-elses-secret").unwrap();
    let a = try_hello(master, |ch| h.seal(Some(&other), &ch.nonce)).unwrap();
    assert!(a.starts_with("SKR2\tREFUSED\t"), "{a}");
    let old = format!("SKR1\t1\t2\t{}\t127.0.0.1:9\t{}", h.fingerprint, h.settings);
    assert_eq!(try_hello(master, |_| old.into_bytes()), None);
    // The real rank 1 is still welcome.
    let r1 = start_rank(1, 2, master, with_secret);
    assert_ring_works(vec![
        r0.join().unwrap().unwrap(),
        r1.join().unwrap().unwrap(),
    ]);
}

/// A TCP relay from `listener` to `upstream` that records what the client sent.
fn recording_relay(listener: TcpListener, upstream: SocketAddr) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut server = connect_when_up(upstream);
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let down = std::thread::spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(std::net::Shutdown::Both);
        });
        let mut sent = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = client.read(&mut buf) {
            sent.extend_from_slice(&buf[..n]);
            if server.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server.shutdown(std::net::Shutdown::Both);
        down.join().unwrap();
        sent
    })
}

#[test]
fn a_recorded_hello_is_refused_when_replayed() {
    // Job A: rank 1 reaches rank 0 through a relay that records its hello.
    let master_a = free_master_on("127.0.0.1");
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let recorder = recording_relay(relay, master_a);
    let r0 = start_rank(0, 2, master_a, with_secret);
    // (MASTER_ADDR is not part of the shared settings: the relay is transparent.)
    let r1 = start_rank(1, 2, relay_addr, with_secret);
    assert_ring_works(vec![
        r0.join().unwrap().unwrap(),
        r1.join().unwrap().unwrap(),
    ]);
    let sent = recorder.join().unwrap();
    let len = u64::from_le_bytes(sent[..8].try_into().unwrap()) as usize;
    let recorded = sent[8..8 + len].to_vec();
    assert!(recorded.starts_with(b"SKR2\tHELLO\t1\t"));
    // Job B, same secret and configuration: the recording, replayed by someone without the
    // secret, must not pass for rank 1 (the code before took it, and then refused the real
    // rank 1 as a second claimant).
    let master_b = free_master_on("127.0.0.1");
    let r0 = start_rank(0, 2, master_b, with_secret);
    let a = try_hello(master_b, |_| recorded.clone()).unwrap();
    assert!(a.starts_with("SKR2\tREFUSED\t"), "{a}");
    let r1 = start_rank(1, 2, master_b, with_secret);
    assert_ring_works(vec![
        r0.join().unwrap().unwrap(),
        r1.join().unwrap().unwrap(),
    ]);
}

#[test]
fn secret_settings_that_differ_fail_clearly() {
    let run = |secret0: Option<&str>, secret1: Option<&str>| {
        let master = free_master_on("127.0.0.1");
        let (s0, s1) = (
            secret0.map(|s| s.to_string()),
            secret1.map(|s| s.to_string()),
        );
        let tweak = |s: Option<String>| {
            move |c: Config| {
                let c = c.with_rendezvous_timeout(Duration::from_secs(3));
                match s {
                    Some(s) => c.with_secret(Secret::new(s).unwrap()),
                    None => c,
                }
            }
        };
        let r0 = start_rank(0, 2, master, tweak(s0));
        let r1 = start_rank(1, 2, master, tweak(s1));
        let e1 = r1.join().unwrap().err().unwrap();
        let e0 = r0.join().unwrap().err().unwrap();
        (e0, e1)
    };
    let (e0, e1) = run(Some(SECRET), None);
    assert!(
        matches!(&e1, CollectiveError::Unauthenticated(m) if m.contains("requires the job secret")),
        "{e1}"
    );
    assert!(
        matches!(e0, CollectiveError::RendezvousTimeout { .. }),
        "{e0}"
    );
    let (_, e1) = run(None, Some(SECRET));
    assert!(
        matches!(&e1, CollectiveError::Unauthenticated(m) if m.contains("runs without a job secret")),
        "{e1}"
    );
    let (e0, e1) = run(Some(SECRET), Some("a-different-secret-here"));
    assert!(
        matches!(&e1, CollectiveError::Unauthenticated(m) if m.contains("refused this rank's hello")),
        "{e1}"
    );
    assert!(
        e0.to_string().contains("refused as unauthenticated"),
        "{e0}"
    );
}

#[test]
fn silent_connections_beyond_the_cap_do_not_lock_out_the_ranks() {
    // More silent connections than rank 0 reads greetings from at once: the excess is closed
    // at once, the rest at their greeting deadline, and the real ranks (which retry a
    // connection closed before rank 0's challenge) get in.
    let master = free_master_on("127.0.0.1");
    let r0 = start_rank(0, 3, master, |c| c);
    let mut squatters: Vec<TcpStream> = (0..MAX_PENDING + 8)
        .map(|_| connect_when_up(master))
        .collect();
    let others: Vec<_> = (1..3).map(|r| start_rank(r, 3, master, |c| c)).collect();
    let mut comms = vec![r0.join().unwrap().expect("rank 0")];
    for h in others {
        comms.push(h.join().unwrap().expect("rank"));
    }
    assert_ring_works(comms);
    for s in &mut squatters {
        assert!(closed_by_peer(s, Duration::from_secs(20)));
    }
}
