//! The control endpoint (protocol v2) of a running switch, over TCP and QUIC: requests and
//! errors, authentication, bounded decoding, bounded connections, bounded jobs, leases, static
//! jobs, startup checks. Issue 11's attacks are written here as tests: each one aborted or
//! degraded the v1 switch.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sketchreduce_control::client::{read_frame, Client};
use sketchreduce_control::{Secret, ServerConfig, SessionError};
use sketchreduce_switch::{spawn_switch, CoreError, QuicSettings, SwitchConfig, SwitchError};
use sketchreduce_wire::control::{Envelope, Hello, Request, Response, MAX_CONNECTIONS};
use sketchreduce_wire::{ErrorKind, JobSpec, WorkerSpec};

const T: Duration = Duration::from_secs(5);
const SECRET: &[u8] = b"control-test-secret-0123456789";

fn secret() -> Option<Arc<Secret>> {
    Some(Arc::new(Secret::new(SECRET).unwrap()))
}

fn spec(id: u16, base: u32, n: usize) -> JobSpec {
    JobSpec {
        id,
        epoch: 0,
        lanes: 64,
        slot_base: base,
        slot_count: 4,
        workers: (0..n)
            .map(|r| WorkerSpec::at(format!("127.0.0.{}:{}", r + 1, 40000 + id).parse().unwrap()))
            .collect(),
    }
}

fn kind(r: Result<impl std::fmt::Debug, sketchreduce_control::ClientError>) -> ErrorKind {
    match r {
        Err(e) => e.kind().unwrap_or_else(|| panic!("not a refusal: {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

/// A raw TCP connection speaking frames by hand.
struct Raw(TcpStream);

impl Raw {
    fn connect(addr: SocketAddr) -> (Raw, Hello) {
        let mut s = TcpStream::connect_timeout(&addr, T).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let hello = read_frame(&mut s).unwrap().unwrap();
        (Raw(s), serde_json::from_slice(&hello).unwrap())
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    fn send_frame(&mut self, json: &str) {
        let mut b = (json.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        self.send(&b);
    }

    /// The next response, parsed (envelope and body).
    fn response(&mut self) -> (Envelope, Response) {
        let f = read_frame(&mut self.0).unwrap().unwrap();
        let env: Envelope = serde_json::from_slice(&f).unwrap();
        let r = Response::from_json(&env.body).unwrap();
        (env, r)
    }

    /// Whether the server closed the connection (EOF) within the read timeout.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0))
    }
}

fn error_kind(r: &Response) -> ErrorKind {
    match r {
        Response::Error { kind, .. } => *kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn requests_and_errors_over_tcp() {
    let mut sc = SwitchConfig::loopback(4, 100);
    sc.max_jobs = 3;
    sc.max_lanes = 256;
    let sw = spawn_switch(sc).unwrap();
    let mut c = Client::connect(sw.control_addr(), None, T).unwrap();
    let i = c.info().unwrap();
    assert_eq!(
        (i.version, i.data_port, i.data_ports, i.slots),
        (2, sw.local_data_addr().port(), 4, 100)
    );
    assert_eq!(
        (i.max_lanes, i.max_workers, i.max_jobs, i.auth),
        (256, 32, 3, false)
    );
    let e1 = c.create(&spec(3, 0, 2), false, 60_000).unwrap();
    assert_ne!(e1, 0);
    assert_eq!(
        kind(c.create(&spec(3, 0, 2), false, 60_000)),
        ErrorKind::Exists
    );
    let e2 = c.create(&spec(3, 0, 2), true, 60_000).unwrap();
    assert_ne!(e2, e1, "replace gives a new epoch");
    let joined = c.join(3).unwrap();
    assert_eq!(joined.epoch, e2);
    assert_eq!(sw.core().job(3).unwrap().epoch, e2, "the data plane has it");
    assert_eq!(kind(c.join(4)), ErrorKind::UnknownJob);
    assert_eq!(
        kind(c.create(&spec(4, 2, 1), false, 60_000)),
        ErrorKind::Overlap
    );
    let mut big = spec(4, 10, 1);
    big.lanes = 512;
    assert_eq!(kind(c.create(&big, false, 60_000)), ErrorKind::Invalid);
    assert_eq!(
        kind(c.create(&spec(4, 10, 33), false, 60_000)),
        ErrorKind::Invalid
    );
    assert_eq!(
        kind(c.create(&spec(4, 10, 1), false, 0)),
        ErrorKind::BadRequest
    );
    c.create(&spec(4, 10, 1), false, 60_000).unwrap();
    c.create(&spec(5, 20, 1), false, 60_000).unwrap();
    assert_eq!(
        kind(c.create(&spec(6, 30, 1), false, 60_000)),
        ErrorKind::Limit
    );
    let counters = c.counters().unwrap();
    assert_eq!(
        counters.jobs.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(kind(c.unregister(3, e1)), ErrorKind::BadEpoch);
    c.unregister(3, e2).unwrap();
    assert_eq!(kind(c.unregister(3, e2)), ErrorKind::UnknownJob);
    assert!(sw.core().job(3).is_none());
    // A well-formed envelope with a bad body: bad_request, and the connection stays usable.
    let (mut raw, hello) = Raw::connect(sw.control_addr());
    assert_eq!(hello.hello, "sketchreduce-control/2");
    assert!(!hello.auth);
    raw.send_frame(r#"{"seq":1,"body":"{\"op\":\"format_disk\"}","mac":""}"#);
    let (env, r) = raw.response();
    assert_eq!((env.seq, error_kind(&r)), (1, ErrorKind::BadRequest));
    raw.send_frame(r#"{"seq":2,"body":"{\"op\":\"info\"}","mac":""}"#);
    assert!(matches!(raw.response().1, Response::Info(_)));
    // A sequence number out of order: unauthorized and closed.
    raw.send_frame(r#"{"seq":2,"body":"{\"op\":\"info\"}","mac":""}"#);
    assert_eq!(error_kind(&raw.response().1), ErrorKind::Unauthorized);
    assert!(raw.closed());
    sw.shutdown();
}

/// Issue 11: a 19-byte v1 (bincode) Register frame claiming 2^36 workers made the switch
/// allocate 2^42 bytes and abort; a `mac` string claiming 2^40 bytes did the same. Protocol
/// v2 reads at most 64 KiB per frame and parses JSON; both are bad requests and the switch
/// stays up. Also: a length prefix above 64 KiB or of 0 closes the connection unanswered, and
/// deeply nested JSON is refused without exhausting the connection thread's stack.
#[test]
fn decoder_bombs_over_tcp_are_answered_and_the_switch_stays_up() {
    let sw = spawn_switch(SwitchConfig::loopback(1, 16)).unwrap();
    let ctl = sw.control_addr();
    // Register{id 1, token 1, lanes 64, base 0, count 8, workers: Vec of len 2^36}.
    let workers_bomb: Vec<u8> = [
        &[0, 0, 0, 15][..],
        &[1, 1, 1, 64, 0, 8, 0xfd, 0, 0, 0, 0, 0x10, 0, 0, 0],
    ]
    .concat();
    assert_eq!(workers_bomb.len(), 19);
    // Register with one worker whose `mac` is Some(string of length 2^40).
    let body: Vec<u8> = [
        &[1, 1, 1, 64, 0, 8, 1, 0, 127, 0, 0, 1, 0xfb, 0x40, 0x9c, 1][..],
        &[0xfd, 0, 0, 0, 0, 0, 1, 0, 0],
    ]
    .concat();
    let mut mac_bomb = (body.len() as u32).to_be_bytes().to_vec();
    mac_bomb.extend_from_slice(&body);
    let nested = format!(r#"{{"seq":1,"body":"{}","mac":""}}"#, "[".repeat(60_000));
    for bomb in [workers_bomb, mac_bomb] {
        let (mut raw, _) = Raw::connect(ctl);
        raw.send(&bomb);
        let (env, r) = raw.response();
        assert_eq!((env.seq, error_kind(&r)), (0, ErrorKind::BadRequest));
        assert!(raw.closed());
    }
    let (mut raw, _) = Raw::connect(ctl);
    raw.send_frame(&nested);
    let (env, r) = raw.response();
    assert_eq!((env.seq, error_kind(&r)), (1, ErrorKind::BadRequest));
    for prefix in [[0x80u8, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]] {
        let (mut raw, _) = Raw::connect(ctl);
        raw.send(&prefix);
        assert!(raw.closed(), "length {prefix:?} closes the connection");
    }
    // Still up, still answering.
    let mut c = Client::connect(ctl, None, T).unwrap();
    assert_eq!(c.info().unwrap().slots, 16);
    sw.shutdown();
}

fn quic_switch(
    tag: &str,
    secret: Option<Arc<Secret>>,
) -> (sketchreduce_switch::SwitchHandle, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("sr-control-quic-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut sc = SwitchConfig::loopback(1, 16);
    sc.secret = secret;
    sc.quic = Some(QuicSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_dir: dir.clone(),
        client_allow: None,
    });
    (spawn_switch(sc).unwrap(), dir)
}

async fn quic_conn(sw: &sketchreduce_switch::SwitchHandle) -> (quinn::Endpoint, quinn::Connection) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        sketchreduce_quic::client_config(sw.fingerprint().unwrap()).unwrap(),
    );
    let conn = ep
        .connect(sw.quic_addr().unwrap(), sketchreduce_quic::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

/// Reads a response frame from a QUIC stream and returns its error kind.
async fn quic_error(recv: &mut quinn::RecvStream) -> ErrorKind {
    let f = sketchreduce_quic::read_frame_async(recv).await.unwrap();
    let env: Envelope = serde_json::from_slice(&f).unwrap();
    error_kind(&Response::from_json(&env.body).unwrap())
}

/// The same bombs on a QUIC control stream (v1 aborted there too: the stream's frame was
/// decoded with bincode).
#[test]
fn decoder_bombs_over_quic_are_answered_and_the_switch_stays_up() {
    let (sw, dir) = quic_switch("bomb", None);
    let bomb: Vec<u8> = [
        &[0, 0, 0, 15][..],
        &[1, 1, 1, 64, 0, 8, 0xfd, 0, 0, 0, 0, 0x10, 0, 0, 0],
    ]
    .concat();
    rt().block_on(async {
        let (_ep, conn) = quic_conn(&sw).await;
        // As the first frame of a stream (where v1 read its request): the server answers its
        // hello and a bad_request, then finishes the stream.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bomb).await.unwrap();
        let hello = sketchreduce_quic::read_frame_async(&mut recv)
            .await
            .unwrap();
        let hello: Hello = serde_json::from_slice(&hello).unwrap();
        assert_eq!(hello.hello, "sketchreduce-control/2");
        assert_eq!(quic_error(&mut recv).await, ErrorKind::BadRequest);
        // After a proper client hello, as a request.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        sketchreduce_quic::write_frame_async(
            &mut send,
            &sketchreduce_control::ClientSession::client_hello(),
        )
        .await
        .unwrap();
        sketchreduce_quic::read_frame_async(&mut recv)
            .await
            .unwrap();
        send.write_all(&bomb).await.unwrap();
        assert_eq!(quic_error(&mut recv).await, ErrorKind::BadRequest);
        // A length prefix above 64 KiB: the stream ends without an answer.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0x80, 0, 0, 0]).await.unwrap();
        assert!(sketchreduce_quic::read_frame_async(&mut recv)
            .await
            .is_err());
        // The switch is up: a normal request on the same connection works.
        match sketchreduce_quic::control_call(&conn, None, &Request::Info {})
            .await
            .unwrap()
        {
            Response::Info(i) => assert_eq!(i.slots, 16),
            other => panic!("{other:?}"),
        }
    });
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// With a secret, unauthenticated, mis-signed and replayed requests are refused (and close the
/// connection); signed ones work and their responses verify.
#[test]
fn unauthenticated_requests_are_refused_when_auth_is_on() {
    let mut sc = SwitchConfig::loopback(1, 16);
    sc.secret = secret();
    let sw = spawn_switch(sc).unwrap();
    let ctl = sw.control_addr();
    let epoch = sw.create(spec(1, 0, 1)).unwrap().epoch;
    // No secret on the client: refused before sending anything.
    assert!(matches!(
        Client::connect(ctl, None, T),
        Err(sketchreduce_control::ClientError::Session(
            SessionError::NeedSecret
        ))
    ));
    // Raw unsigned and badly signed requests, for each sensitive op.
    let create = serde_json::to_string(&Request::Create {
        spec: spec(2, 8, 1),
        replace: true,
        lease_ms: 1000,
    })
    .unwrap();
    let bodies = [
        r#"{"op":"counters"}"#.to_string(),
        format!(r#"{{"op":"unregister","job":1,"epoch":{epoch}}}"#),
        create,
    ];
    let wrong = Secret::new(b"not-the-right-secret".to_vec()).unwrap();
    for body in &bodies {
        for mac in ["".to_string(), "0".repeat(64), {
            // A MAC under another secret, for the right nonce: computed below per connection.
            String::new()
        }] {
            let (mut raw, hello) = Raw::connect(ctl);
            assert!(hello.auth);
            let mac = if mac.is_empty() {
                wrong.mac(
                    sketchreduce_wire::control::REQUEST_CONTEXT,
                    &hello.nonce,
                    1,
                    body,
                )
            } else {
                mac
            };
            let env = Envelope {
                seq: 1,
                body: body.clone(),
                mac,
            };
            raw.send_frame(&serde_json::to_string(&env).unwrap());
            assert_eq!(error_kind(&raw.response().1), ErrorKind::Unauthorized);
            assert!(raw.closed());
        }
    }
    assert_eq!(sw.core().job(1).unwrap().epoch, epoch, "job 1 untouched");
    assert!(sw.core().job(2).is_none(), "job 2 not created");
    // A correctly signed request replayed on another connection: its nonce differs.
    let (mut raw, hello) = Raw::connect(ctl);
    let s = Secret::new(SECRET).unwrap();
    let body = r#"{"op":"counters"}"#;
    let env = Envelope {
        seq: 1,
        body: body.into(),
        mac: s.mac(
            sketchreduce_wire::control::REQUEST_CONTEXT,
            &hello.nonce,
            1,
            body,
        ),
    };
    let frame = serde_json::to_string(&env).unwrap();
    raw.send_frame(&frame);
    let (renv, r) = raw.response();
    assert!(matches!(r, Response::Counters(_)));
    assert!(s.verify(
        sketchreduce_wire::control::RESPONSE_CONTEXT,
        &hello.nonce,
        1,
        &renv.body,
        &renv.mac
    ));
    raw.send_frame(&frame);
    assert_eq!(
        error_kind(&raw.response().1),
        ErrorKind::Unauthorized,
        "replay on the same connection"
    );
    let (mut raw2, _) = Raw::connect(ctl);
    raw2.send_frame(&frame);
    assert_eq!(
        error_kind(&raw2.response().1),
        ErrorKind::Unauthorized,
        "replay on another connection"
    );
    // The client with the secret does everything.
    let mut c = Client::connect(ctl, secret(), T).unwrap();
    assert!(c.info().unwrap().auth);
    c.unregister(1, epoch).unwrap();
    c.create(&spec(2, 8, 1), false, 1000).unwrap();
    // A client with a secret refuses a switch without auth (it could be anyone).
    let open = spawn_switch(SwitchConfig::loopback(1, 16)).unwrap();
    assert!(matches!(
        Client::connect(open.control_addr(), secret(), T),
        Err(sketchreduce_control::ClientError::Session(
            SessionError::ServerWithoutAuth
        ))
    ));
    open.shutdown();
    sw.shutdown();
}

#[test]
fn quic_control_authenticates_too() {
    let (sw, dir) = quic_switch("auth", secret());
    rt().block_on(async {
        let (_ep, conn) = quic_conn(&sw).await;
        let r = sketchreduce_quic::control_call(&conn, None, &Request::Counters {}).await;
        assert!(r.is_err(), "no secret: refused at the hello");
        let wrong = Some(Arc::new(
            Secret::new(b"not-the-right-secret".to_vec()).unwrap(),
        ));
        match sketchreduce_quic::control_call(&conn, wrong, &Request::Counters {}).await {
            Err(_) => {}
            Ok(r) => assert_eq!(error_kind(&r), ErrorKind::Unauthorized),
        }
        match sketchreduce_quic::control_call(&conn, secret(), &Request::Counters {})
            .await
            .unwrap()
        {
            Response::Counters(_) => {}
            other => panic!("{other:?}"),
        }
    });
    sw.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// (VmRSS, VmHWM) of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn raise_fd_limit(want: u64) -> bool {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return false;
        }
        if r.rlim_cur >= want {
            return true;
        }
        r.rlim_cur = want.min(r.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 && r.rlim_cur >= want
    }
}

/// Issue 11: v1 spawned one thread per control connection, so 3,000 idle connections made
/// 3,000 threads. v2 keeps at most 64 connections (TCP and QUIC together); the others are
/// closed at once. Prints the process's thread count and RSS for the report.
#[test]
fn idle_connections_do_not_create_threads() {
    if !raise_fd_limit(8192) {
        eprintln!("skipped: cannot raise RLIMIT_NOFILE to 8192");
        return;
    }
    let sw = spawn_switch(SwitchConfig::loopback(1, 4096)).unwrap();
    let ctl = sw.control_addr();
    // Let the switch's threads start.
    Client::connect(ctl, None, T).unwrap().info().unwrap();
    let before = threads();
    let (rss0, _) = rss_kib();
    let mut conns = Vec::with_capacity(3000);
    for _ in 0..3000 {
        let s = TcpStream::connect_timeout(&ctl, T).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        conns.push(s);
    }
    // The first 64 got a hello; the rest were closed without one.
    let mut served = 0;
    let mut closed = 0;
    for s in conns.iter_mut() {
        let mut b = [0u8; 4];
        match s.read(&mut b) {
            Ok(0) => closed += 1,
            Ok(_) => served += 1,
            Err(e) => panic!("neither a hello nor a close: {e}"),
        }
    }
    let during = threads();
    let (rss1, hwm) = rss_kib();
    println!(
        "3000 idle control connections: served {served}, closed {closed}; threads {before} -> {during}; RSS {rss0} -> {rss1} KiB (peak {hwm} KiB)"
    );
    assert_eq!(served, MAX_CONNECTIONS);
    assert_eq!(closed, 3000 - MAX_CONNECTIONS);
    assert!(
        during <= before + MAX_CONNECTIONS,
        "threads {before} -> {during}"
    );
    // A new client is refused while the places are taken, and served once they are free.
    drop(conns);
    let t0 = Instant::now();
    let info = loop {
        match Client::connect(ctl, None, T).and_then(|mut c| c.info()) {
            Ok(i) => break i,
            Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("switch did not recover: {e}"),
        }
    };
    assert_eq!(info.slots, 4096);
    sw.shutdown();
}

/// A connection that sends nothing is closed after the idle deadline; one that starts a frame
/// and stalls, after the frame deadline (shortened here); both free their place.
#[test]
fn idle_and_slow_connections_are_closed() {
    let mut sc = SwitchConfig::loopback(1, 16);
    sc.control_timing = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        frame_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let sw = spawn_switch(sc).unwrap();
    let (mut idle, _) = Raw::connect(sw.control_addr());
    let (mut slow, _) = Raw::connect(sw.control_addr());
    slow.send(&[0, 0, 0, 50, b'{']);
    let t0 = Instant::now();
    assert!(idle.closed());
    assert!(slow.closed());
    assert!(
        t0.elapsed() < T,
        "closed by the deadlines, not the read timeout"
    );
    sw.shutdown();
}

/// Issue 11: jobs are bounded (max_jobs) and create/unregister cycles do not grow memory.
/// 1,000 create/unregister cycles and distinct jobs up to the cap and beyond, over TCP.
#[test]
fn registrations_keep_memory_bounded() {
    let mut sc = SwitchConfig::loopback(2, 4096);
    sc.max_jobs = 64;
    let sw = spawn_switch(sc).unwrap();
    let mut c = Client::connect(sw.control_addr(), None, T).unwrap();
    let (rss0, _) = rss_kib();
    for i in 0..1000u32 {
        let s = spec(7, (i % 64) * 4, 32);
        let e = c.create(&s, false, 60_000).unwrap();
        c.unregister(7, e).unwrap();
    }
    let mut limited = 0;
    for id in 1..=1000u16 {
        match c.create(&spec(id, (id as u32 - 1) % 1024 * 4, 32), false, 60_000) {
            Ok(_) => {}
            Err(e) if e.kind() == Some(ErrorKind::Limit) => limited += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let (rss1, hwm) = rss_kib();
    println!(
        "1000 create/unregister cycles + 1000 creates (64 accepted): RSS {rss0} -> {rss1} KiB (peak {hwm} KiB)"
    );
    assert_eq!(limited, 1000 - 64);
    assert_eq!(sw.plane().jobs().len(), 64);
    assert_eq!(sw.core().jobs().len(), 64);
    assert_eq!(c.counters().unwrap().jobs.len(), 64);
    assert!(
        rss1 < rss0 + 16 * 1024,
        "memory grew from {rss0} to {rss1} KiB"
    );
    sw.shutdown();
}

#[test]
fn leases_expire_without_traffic() {
    let mut sc = SwitchConfig::loopback(1, 16);
    sc.control_timing.sweep_interval = Duration::from_millis(20);
    let sw = spawn_switch(sc).unwrap();
    let mut c = Client::connect(sw.control_addr(), None, T).unwrap();
    let quiet = c.create(&spec(1, 0, 1), false, 200).unwrap();
    let busy_spec = spec(2, 4, 1);
    let busy = c.create(&busy_spec, false, 1500).unwrap();
    // Keep job 2 alive with PROBEs from its registered address.
    let sock = std::net::UdpSocket::bind(busy_spec.workers[0].addr).unwrap();
    let mut h = sketchreduce_wire::Header {
        kind: sketchreduce_wire::Kind::Probe,
        op: sketchreduce_wire::Op::Add,
        rank: 0,
        job: 2,
        lanes: 0,
        epoch: busy,
        slot: 4,
        set: 0,
        count: 0,
        flags: 0,
        round: 0,
        offset: 0,
        bitmap: 0,
    };
    let mut p = [0u8; 32];
    let t0 = Instant::now();
    let mut quiet_gone = None;
    while t0.elapsed() < Duration::from_secs(3) {
        h.offset += 1;
        sketchreduce_wire::packet::build(&h, &[], &mut p).unwrap();
        sock.send_to(&p, sw.local_data_addr()).unwrap();
        if quiet_gone.is_none() && c.join(1).is_err() {
            quiet_gone = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(quiet_gone.is_some(), "job 1's lease expired");
    assert!(sw.core().job(1).is_none());
    assert_eq!(kind(c.unregister(1, quiet)), ErrorKind::UnknownJob);
    assert_eq!(
        c.join(2).unwrap().epoch,
        busy,
        "job 2 kept alive by its probes"
    );
    assert!(c.counters().unwrap().job(2).unwrap().probes > 10);
    sw.shutdown();
}

#[test]
fn static_jobs_keep_their_epoch_and_have_no_lease() {
    let mut s = spec(9, 0, 2);
    s.epoch = 0x1234_5678;
    let mut sc = SwitchConfig::loopback(1, 16);
    sc.jobs = vec![s.clone()];
    sc.control_timing.sweep_interval = Duration::from_millis(10);
    let sw = spawn_switch(sc).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut c = Client::connect(sw.control_addr(), None, T).unwrap();
    assert_eq!(c.join(9).unwrap(), s);
    assert_eq!(kind(c.create(&s, true, 1000)), ErrorKind::Conflict);
    assert_eq!(kind(c.create(&s, false, 1000)), ErrorKind::Exists);
    assert_eq!(kind(c.unregister(9, s.epoch)), ErrorKind::Conflict);
    sw.shutdown();
    let mut zero = spec(9, 0, 2);
    zero.epoch = 0;
    let mut sc = SwitchConfig::loopback(1, 16);
    sc.jobs = vec![zero];
    assert!(matches!(
        spawn_switch(sc),
        Err(SwitchError::Job { job: 9, .. })
    ));
}

#[test]
fn startup_checks() {
    // A control endpoint off loopback needs a secret.
    let mut sc = SwitchConfig::loopback(1, 16);
    sc.control = Some("0.0.0.0:0".parse().unwrap());
    let e = spawn_switch(sc.clone()).unwrap_err();
    assert!(matches!(e, SwitchError::Config(_)), "{e}");
    assert!(e.to_string().contains("secret"), "{e}");
    sc.secret = secret();
    spawn_switch(sc).unwrap().shutdown();
    // So does a QUIC endpoint (its streams carry the same control requests).
    let mut sc = SwitchConfig::loopback(1, 16);
    let dir = std::env::temp_dir().join(format!("sr-control-quic-bind-{}", std::process::id()));
    sc.quic = Some(QuicSettings {
        listen: "0.0.0.0:0".parse().unwrap(),
        cert_dir: dir.clone(),
        client_allow: None,
    });
    let e = spawn_switch(sc.clone()).unwrap_err();
    assert!(e.to_string().contains("secret"), "{e}");
    sc.secret = secret();
    spawn_switch(sc).unwrap().shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    // The default control address is loopback even when the data path is not.
    let mut sc = SwitchConfig::loopback(1, 16);
    sc.listen = "0.0.0.0:0".parse().unwrap();
    let sw = spawn_switch(sc).unwrap();
    assert!(sw.control_addr().ip().is_loopback());
    sw.shutdown();
    // Register memory is bounded: a clear error, not an abort.
    let mut sc = SwitchConfig::loopback(1, 4_000_000_000);
    sc.max_lanes = 2048;
    let e = spawn_switch(sc).unwrap_err();
    assert!(
        matches!(e, SwitchError::Core(CoreError::TooLarge { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("1 GiB"), "{e}");
}
