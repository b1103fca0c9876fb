//! The rendezvous on rank 0 and the ring links (`docs/security.md`, "Rendezvous and ring";
//! greetings in [`crate::greeting`]).
//!
//! 1. Every rank ≠ 0 connects to `MASTER_ADDR:MASTER_PORT`. Rank 0 answers each connection
//!    with a [`Challenge`] (a fresh nonce); the rank sends its [`Hello`] (rank, world size,
//!    config fingerprint, data address, its own nonce), authenticated for that nonce when the
//!    job has a secret. Rank 0 answers `WAIT` at once, and once every rank is in, `OK` with a
//!    fresh session id and every data address (or `MISMATCH` / `TIMEOUT`), authenticated for
//!    the rank's nonce.
//! 2. Each rank connects to the next rank's data port: challenge, [`Link`] (rank, fingerprint,
//!    session, nonce), [`Linked`]; the accepting rank keeps accepting until the expected
//!    predecessor has authenticated, dropping every other connection.
//!
//! Both listeners read greetings concurrently, each connection on its own thread with a
//! whole deadline ([`GREETING_DEADLINE`]), at most [`MAX_PENDING`] at once, so neither a silent
//! nor a trickling client holds up the real ranks.

use crate::config::Config;
use crate::error::{CollectiveError, Result};
use crate::greeting::{Answer, Challenge, GreetingError, Hello, Link, Linked, BUSY, MAX_GREETING};
use crate::net::{read_frame_by, write_frame, Ring};
use sketchreduce_control::auth::new_nonce;
use sketchreduce_control::Secret;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a rank waits for rank 0's challenge and for the acknowledgement of its hello:
/// whatever listens on MASTER_PORT and stays silent is not rank 0.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(4);
/// Whole deadline for an accepted connection to deliver its greeting (hello or link).
pub const GREETING_DEADLINE: Duration = Duration::from_secs(4);
/// Most connections whose greeting is awaited at once on one listener; more are closed at
/// once.
pub const MAX_PENDING: usize = 64;
/// Write timeout for greetings (small frames: they fit in the socket buffer).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Refused connections logged as warnings (and named in a timeout) per listener; the rest are
/// only counted, so that a flood of strangers cannot flood the log or grow a list.
const NOTED: usize = 8;

/// Counts refused connections; [`Refusals::note`] is true for the first [`NOTED`].
#[derive(Debug, Default)]
struct Refusals(AtomicUsize);

impl Refusals {
    fn note(&self) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed) < NOTED
    }
    fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

fn io_err(what: &str, e: io::Error) -> CollectiveError {
    CollectiveError::Io(format!("{what}: {e}"))
}

/// Runs the rendezvous and connects the ring.
pub(crate) fn connect(cfg: &Config) -> Result<Ring> {
    cfg.validate()?;
    let (rank, world) = (cfg.rank, cfg.world_size);
    let mut ring = Ring::new(rank, world, cfg.timeout);
    if world == 1 {
        return Ok(ring);
    }
    let secret = cfg.job_secret()?;
    let secret = secret.as_ref();
    if secret.is_none() && rank == 0 && !cfg.master.ip().is_loopback() {
        tracing::warn!(
            master = %cfg.master,
            "rendezvous without a job secret: any host that reaches MASTER_PORT can join as a missing rank (set SKETCHREDUCE_SECRET_FILE on every rank, docs/security.md)"
        );
    }
    let deadline = Instant::now() + cfg.rendezvous_timeout;
    let (data, addrs, session) = if rank == 0 {
        let listener = TcpListener::bind(cfg.master)
            .map_err(|e| io_err(&format!("rank 0 cannot listen on MASTER {}", cfg.master), e))?;
        let data = TcpListener::bind((cfg.master.ip(), 0)).map_err(|e| io_err("data port", e))?;
        let my_addr = data.local_addr().map_err(|e| io_err("data port", e))?;
        let (addrs, session) = serve(cfg, secret, &listener, my_addr, deadline)?;
        (data, addrs, session)
    } else {
        let (s, ch) = reach_rank_0(cfg, deadline)?;
        let ip = s
            .local_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let data = TcpListener::bind((ip, 0)).map_err(|e| io_err("data port", e))?;
        let my_addr = data.local_addr().map_err(|e| io_err("data port", e))?;
        let (addrs, session) = join(cfg, secret, s, ch, my_addr)?;
        (data, addrs, session)
    };
    let (next, prev) = link(cfg, secret, &data, &addrs, &session)?;
    for s in [&next, &prev] {
        crate::net::tune_ring_socket(s);
        s.set_read_timeout(Some(cfg.timeout)).ok();
        s.set_write_timeout(Some(cfg.timeout)).ok();
    }
    ring.next = Some(next);
    ring.prev = Some(prev);
    Ok(ring)
}

/// Checks the peer's challenge against this rank's secret (no silent downgrade either way).
fn check_auth(ch: &Challenge, secret: Option<&Secret>, peer: &str) -> Result<()> {
    match (ch.auth, secret.is_some()) {
        (true, false) => Err(CollectiveError::Unauthenticated(format!(
            "{peer} requires the job secret (SKETCHREDUCE_SECRET_FILE or SKETCHREDUCE_SECRET) and this rank has none"
        ))),
        (false, true) => Err(CollectiveError::Unauthenticated(format!(
            "{peer} runs without a job secret and this rank has one: refusing an unauthenticated rendezvous (give every rank the same secret)"
        ))),
        _ => Ok(()),
    }
}

fn greeting_error(e: GreetingError, from: &str) -> CollectiveError {
    match e {
        GreetingError::Unauthenticated(_) => {
            CollectiveError::Unauthenticated(format!("{from}: {e}"))
        }
        _ => CollectiveError::Mismatch(format!("{from}: {e}")),
    }
}

/// Connects to rank 0 and reads its challenge, retrying while nothing listens yet (rank 0 not
/// started), while rank 0 answers `BUSY` (its greeting places are taken), and for a moment
/// when a connection closes before the challenge.
fn reach_rank_0(cfg: &Config, deadline: Instant) -> Result<(TcpStream, Challenge)> {
    let master = cfg.master.to_string();
    let ack = ACK_TIMEOUT.min(cfg.rendezvous_timeout);
    let mut reached: Option<Instant> = None;
    let mut buf = Vec::new();
    loop {
        let mut s = match TcpStream::connect_timeout(&cfg.master, Duration::from_millis(500)) {
            Ok(s) => s,
            Err(e) if Instant::now() >= deadline => {
                return Err(CollectiveError::RendezvousTimeout {
                    master,
                    timeout: cfg.rendezvous_timeout,
                    detail: format!("rank {} could not reach rank 0: {e}", cfg.rank),
                })
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        s.set_nodelay(true).ok();
        let first = *reached.get_or_insert_with(Instant::now);
        let silent = |e: &dyn std::fmt::Display| {
            CollectiveError::RendezvousTimeout {
            master: master.clone(),
            timeout: cfg.rendezvous_timeout,
            detail: format!(
                "rank {} reached {master} but no sketchreduce rank 0 answered within {ack:?} ({e}): is MASTER_PORT used by another program (then rank 0 could not listen on it)?",
                cfg.rank
            ),
        }
        };
        match read_frame_by(&mut s, &mut buf, MAX_GREETING, Instant::now() + ack) {
            Ok(()) if buf == BUSY && Instant::now() < deadline => {
                tracing::debug!(%master, "rank 0 is busy with other connections, retrying");
                reached = None;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(()) if buf == BUSY => {
                return Err(CollectiveError::RendezvousTimeout {
                    master,
                    timeout: cfg.rendezvous_timeout,
                    detail: format!(
                        "rank {}: rank 0 stayed busy with {MAX_PENDING} other connections",
                        cfg.rank
                    ),
                })
            }
            Ok(()) => {
                let ch = Challenge::parse(&buf).map_err(|e| silent(&e))?;
                return Ok((s, ch));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                ) && first.elapsed() < ack =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(silent(&e)),
        }
    }
}

/// A rank ≠ 0: sends its hello on the connection `s` that brought challenge `ch`; returns
/// every rank's data address and the session id.
fn join(
    cfg: &Config,
    secret: Option<&Secret>,
    mut s: TcpStream,
    ch: Challenge,
    my_addr: SocketAddr,
) -> Result<(Vec<SocketAddr>, String)> {
    let (rank, world) = (cfg.rank, cfg.world_size);
    let master = cfg.master.to_string();
    check_auth(&ch, secret, &format!("rank 0 at {master}"))?;
    let hello = Hello {
        rank,
        world,
        fingerprint: cfg.fingerprint(),
        data_addr: my_addr,
        nonce: new_nonce(),
        settings: cfg.shared_settings(),
    };
    s.set_write_timeout(Some(WRITE_TIMEOUT)).ok();
    write_frame(&mut s, &hello.seal(secret, &ch.nonce)).map_err(|e| io_err("rendezvous", e))?;
    // Rank 0 acknowledges a hello at once (WAIT), then answers once everyone is in; allow the
    // whole rendezvous window plus a margin for rank 0's own deadline.
    let ack = ACK_TIMEOUT.min(cfg.rendezvous_timeout);
    let max = Answer::max_len(world);
    let mut buf = Vec::new();
    let mut answer = None;
    for (seq, wait) in [
        (1, ack),
        (2, cfg.rendezvous_timeout + Duration::from_secs(5)),
    ] {
        read_frame_by(&mut s, &mut buf, max, Instant::now() + wait).map_err(|e| {
            CollectiveError::RendezvousTimeout {
                master: master.clone(),
                timeout: cfg.rendezvous_timeout,
                detail: format!("rank {rank} got no answer from rank 0: {e}"),
            }
        })?;
        let a = Answer::open(&buf, secret, &hello.nonce, seq, world)
            .map_err(|e| greeting_error(e, "rank 0's answer"))?;
        if a != Answer::Wait {
            answer = Some(a);
            break;
        }
    }
    match answer {
        Some(Answer::Ok { session, addrs }) => Ok((addrs, session)),
        Some(Answer::Mismatch(m)) => Err(CollectiveError::ConfigMismatch(m)),
        Some(Answer::Timeout(detail)) => Err(CollectiveError::RendezvousTimeout {
            master,
            timeout: cfg.rendezvous_timeout,
            detail,
        }),
        Some(Answer::Refused(why)) => Err(CollectiveError::Unauthenticated(format!(
            "rank 0 at {master} refused this rank's hello ({why}): do all ranks have the same job secret?"
        ))),
        Some(Answer::Wait) | None => Err(CollectiveError::Mismatch(
            "rank 0 answered WAIT twice".into(),
        )),
    }
}

/// Accepts connections on `listener` until `on_greeted` returns `Some`, `deadline` passes
/// (`Ok(None)`) or `cancel` is set (`Ok(None)`). Each connection's greeting is read by
/// `greet(stream, peer, its deadline)` on a thread of its own, within [`GREETING_DEADLINE`]
/// of being accepted; at most [`MAX_PENDING`] at once (more are closed at once). `greet`
/// returns `None` to drop the connection (it logs why). Connections still pending at the end
/// are shut down.
fn accept_greetings<G: Send, R>(
    listener: &TcpListener,
    deadline: Instant,
    cancel: &AtomicBool,
    greet: impl Fn(&mut TcpStream, SocketAddr, Instant) -> Option<G> + Sync,
    mut on_greeted: impl FnMut(TcpStream, SocketAddr, G) -> Option<R>,
) -> Result<Option<R>> {
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("rendezvous listener", e))?;
    type Done<G> = (u64, Option<(TcpStream, SocketAddr, G)>);
    std::thread::scope(|sc| {
        let (tx, rx) = mpsc::channel::<Done<G>>();
        let mut pending: HashMap<u64, TcpStream> = HashMap::new();
        let mut next_id = 0u64;
        let greet = &greet;
        let outcome = 'serve: loop {
            loop {
                match listener.accept() {
                    Ok((s, peer)) => {
                        if pending.len() >= MAX_PENDING {
                            tracing::debug!(%peer, "{MAX_PENDING} greetings pending: BUSY");
                            // Never blocks: a fresh connection's send buffer is empty.
                            let mut s = s;
                            s.set_nonblocking(true).ok();
                            let _ = write_frame(&mut s, BUSY);
                            continue;
                        }
                        let Ok(handle) = s.try_clone() else { continue };
                        let (id, tx) = (next_id, tx.clone());
                        next_id += 1;
                        let by = Instant::now() + GREETING_DEADLINE;
                        let spawned = std::thread::Builder::new()
                            .name("sketchreduce-greet".into())
                            .stack_size(256 << 10)
                            .spawn_scoped(sc, move || {
                                let mut s = s;
                                s.set_nonblocking(false).ok();
                                s.set_write_timeout(Some(WRITE_TIMEOUT)).ok();
                                let r = greet(&mut s, peer, by).map(|g| (s, peer, g));
                                let _ = tx.send((id, r));
                            });
                        if spawned.is_ok() {
                            pending.insert(id, handle);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Out of descriptors, a connection aborted before accept, …: keep
                        // serving the ones already here.
                        tracing::debug!(error = %e, "rendezvous accept");
                        break;
                    }
                }
            }
            let mut got = rx.recv_timeout(Duration::from_millis(5)).ok();
            while let Some((id, r)) = got {
                pending.remove(&id);
                if let Some((s, peer, g)) = r {
                    if let Some(out) = on_greeted(s, peer, g) {
                        break 'serve Some(out);
                    }
                }
                got = rx.try_recv().ok();
            }
            if Instant::now() >= deadline || cancel.load(Ordering::Relaxed) {
                break None;
            }
        };
        for s in pending.values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        Ok(outcome)
    })
}

/// A rank's connection while rank 0 waits for the others.
struct Waiting {
    s: TcpStream,
    /// The hello's nonce, which rank 0's answers are authenticated for.
    nonce: String,
    /// Answers sent so far.
    seq: u64,
}

impl Waiting {
    fn answer(&mut self, a: &Answer, secret: Option<&Secret>) {
        self.seq += 1;
        let _ = write_frame(&mut self.s, &a.seal(secret, &self.nonce, self.seq));
    }
}

/// What a rendezvous connection delivered: a valid hello, or an unauthenticated one (with a
/// note for the first few).
enum Greeted {
    Hello(Hello, String),
    Refused(Option<String>),
}

/// Rank 0: collects every rank's hello (rank, world size, config fingerprint, data address),
/// refuses mismatches with an answer to everyone, and answers with the data addresses and a
/// fresh session id.
fn serve(
    cfg: &Config,
    secret: Option<&Secret>,
    listener: &TcpListener,
    my_addr: SocketAddr,
    deadline: Instant,
) -> Result<(Vec<SocketAddr>, String)> {
    let world = cfg.world_size;
    let fingerprint = cfg.fingerprint();
    let ours = cfg.shared_settings();
    let mut addrs: Vec<Option<SocketAddr>> = vec![None; world];
    addrs[0] = Some(my_addr);
    let mut conns: Vec<Waiting> = Vec::new();
    let mut problem: Option<String> = None;
    let refusals = Refusals::default();
    let mut refused: Vec<String> = Vec::new();
    let mut unauthenticated = 0usize;
    // Ranks that checked in, valid or not: after a problem, rank 0 keeps listening until every
    // rank has been told (MISMATCH at once), so no rank is left to time out on a closed port.
    let mut arrived = vec![false; world];
    arrived[0] = true;
    let greet = |s: &mut TcpStream, peer: SocketAddr, by: Instant| {
        let ch = Challenge::new(secret.is_some());
        write_frame(s, &ch.encode()).ok()?;
        let mut buf = Vec::new();
        if let Err(e) = read_frame_by(s, &mut buf, MAX_GREETING, by) {
            tracing::debug!(%peer, error = %e, "rendezvous: no hello");
            return None;
        }
        match Hello::open(&buf, secret, &ch.nonce) {
            Ok(h) => Some(Greeted::Hello(h, peer.to_string())),
            Err(e @ GreetingError::Unauthenticated(_)) => {
                let why = e.to_string();
                let _ = write_frame(s, &Answer::Refused(why.clone()).seal(None, "", 0));
                let noted = refusals.note();
                if noted {
                    tracing::warn!(%peer, error = %e, "rendezvous: hello refused");
                }
                Some(Greeted::Refused(noted.then(|| format!("{peer}: {why}"))))
            }
            Err(e) => {
                if refusals.note() {
                    tracing::warn!(%peer, error = %e, "rendezvous: ignoring a non-sketchreduce client");
                }
                None
            }
        }
    };
    let never = AtomicBool::new(false);
    accept_greetings(listener, deadline, &never, greet, |s, _, g| {
        let (h, peer) = match g {
            Greeted::Hello(h, peer) => (h, peer),
            Greeted::Refused(note) => {
                refused.extend(note);
                unauthenticated += 1;
                return None;
            }
        };
        let mut found = None;
        if h.world != world {
            found = Some(format!(
                "rank {} was started with WORLD_SIZE={} but rank 0 with {world}",
                h.rank, h.world
            ));
        } else if h.rank == 0 || h.rank >= world {
            found = Some(format!("a worker at {peer} claims invalid rank {}", h.rank));
        } else if addrs[h.rank].is_some() {
            found = Some(format!(
                "two workers claim rank {} (second one at {peer})",
                h.rank
            ));
        } else if h.fingerprint != fingerprint {
            found = Some(format!(
                "rank {}'s job config differs from rank 0's: {}",
                h.rank,
                settings_diff(&h.settings, &ours)
            ));
        } else if problem.is_none() {
            addrs[h.rank] = Some(h.data_addr);
        }
        // The first problem is the one every rank hears about.
        if problem.is_none() {
            problem = found;
        }
        if h.rank < world {
            arrived[h.rank] = true;
        }
        conns.push(Waiting {
            s,
            nonce: h.nonce,
            seq: 0,
        });
        if let Some(p) = &problem {
            let a = Answer::Mismatch(p.clone());
            for mut c in conns.drain(..) {
                c.answer(&a, secret);
            }
        } else if let Some(c) = conns.last_mut() {
            c.answer(&Answer::Wait, secret);
        }
        arrived.iter().all(|&a| a).then_some(())
    })?;
    let (answer, result) = if let Some(p) = problem {
        (
            Answer::Mismatch(p.clone()),
            Err(CollectiveError::ConfigMismatch(p)),
        )
    } else if let Some(list) = addrs.iter().copied().collect::<Option<Vec<_>>>() {
        let session = new_nonce();
        (
            Answer::Ok {
                session: session.clone(),
                addrs: list.clone(),
            },
            Ok((list, session)),
        )
    } else {
        let missing: Vec<usize> = (0..world).filter(|&r| addrs[r].is_none()).collect();
        let mut detail = format!("ranks {missing:?} never arrived");
        if unauthenticated > 0 {
            detail += &format!(
                "; {unauthenticated} hello(s) refused as unauthenticated ({}): do all ranks have the same job secret?",
                refused.join("; ")
            );
        }
        (
            Answer::Timeout(detail.clone()),
            Err(CollectiveError::RendezvousTimeout {
                master: cfg.master.to_string(),
                timeout: cfg.rendezvous_timeout,
                detail,
            }),
        )
    };
    for mut c in conns {
        c.answer(&answer, secret);
    }
    result
}

/// Human-readable difference between two `key=value ...` setting strings.
fn settings_diff(theirs: &str, ours: &str) -> String {
    let a: Vec<&str> = theirs.split(' ').collect();
    let b: Vec<&str> = ours.split(' ').collect();
    let d: Vec<String> = a
        .iter()
        .filter(|kv| !b.contains(kv))
        .map(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            let ours = b
                .iter()
                .find(|o| o.split('=').next() == Some(key))
                .copied()
                .unwrap_or("(missing)");
            format!("{kv} (rank 0 has {ours})")
        })
        .collect();
    if d.is_empty() {
        "settings differ".into()
    } else {
        d.join(", ")
    }
}

/// Ring links: connects to the next rank while accepting the previous one (concurrently:
/// every rank does both, and a link is only complete once its acceptor has answered).
fn link(
    cfg: &Config,
    secret: Option<&Secret>,
    data: &TcpListener,
    addrs: &[SocketAddr],
    session: &str,
) -> Result<(TcpStream, TcpStream)> {
    let deadline = Instant::now() + cfg.rendezvous_timeout;
    let failed = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let dial = sc.spawn(|| {
            let r = dial_link(cfg, secret, addrs, session, deadline);
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            r
        });
        let prev = accept_link(cfg, secret, data, session, deadline, &failed);
        let next = dial
            .join()
            .unwrap_or_else(|_| Err(CollectiveError::Io("ring link thread panicked".into())));
        Ok((next?, prev?))
    })
}

/// Connects to the next rank's data port and authenticates the link.
fn dial_link(
    cfg: &Config,
    secret: Option<&Secret>,
    addrs: &[SocketAddr],
    session: &str,
    deadline: Instant,
) -> Result<TcpStream> {
    let (rank, next) = (cfg.rank, (cfg.rank + 1) % cfg.world_size);
    let addr = addrs[next];
    let lost = |reason: String| CollectiveError::PeerLost {
        rank,
        peer: next,
        during: format!("connecting the ring to {addr}"),
        reason,
    };
    let mut buf = Vec::new();
    let mut s = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut s = TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1)))
            .map_err(|e| lost(e.to_string()))?;
        read_frame_by(&mut s, &mut buf, MAX_GREETING, deadline).map_err(|e| lost(e.to_string()))?;
        if buf != BUSY || Instant::now() >= deadline {
            break s;
        }
        // Strangers occupy the data port's greeting places: try again.
        std::thread::sleep(Duration::from_millis(100));
    };
    s.set_nodelay(true).ok();
    s.set_write_timeout(Some(WRITE_TIMEOUT)).ok();
    let ch = Challenge::parse(&buf).map_err(|e| greeting_error(e, &format!("rank {next}")))?;
    check_auth(&ch, secret, &format!("rank {next}'s data port {addr}"))?;
    let nonce = new_nonce();
    let link = Link {
        rank,
        fingerprint: cfg.fingerprint(),
        session: session.to_string(),
        nonce: nonce.clone(),
    };
    write_frame(&mut s, &link.seal(secret, &ch.nonce)).map_err(|e| lost(e.to_string()))?;
    read_frame_by(&mut s, &mut buf, MAX_GREETING, deadline).map_err(|e| lost(e.to_string()))?;
    let linked = Linked::open(&buf, secret, &nonce)
        .map_err(|e| greeting_error(e, &format!("rank {next}'s link acceptance")))?;
    if linked.rank != next {
        return Err(lost(format!(
            "accepted by rank {} instead of rank {next}",
            linked.rank
        )));
    }
    Ok(s)
}

/// Accepts the previous rank's link on `data`: the first connection that presents a valid,
/// authenticated link from that rank for this session; every other connection is dropped.
fn accept_link(
    cfg: &Config,
    secret: Option<&Secret>,
    data: &TcpListener,
    session: &str,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<TcpStream> {
    let (rank, world) = (cfg.rank, cfg.world_size);
    let prev = (rank + world - 1) % world;
    let fingerprint = cfg.fingerprint();
    let refusals = Refusals::default();
    let greet = |s: &mut TcpStream, peer: SocketAddr, by: Instant| {
        let ch = Challenge::new(secret.is_some());
        write_frame(s, &ch.encode()).ok()?;
        let mut buf = Vec::new();
        let refuse = |why: &dyn std::fmt::Display| {
            if refusals.note() {
                tracing::warn!(%peer, rank, "ring data port: refused a connection: {why}");
            }
        };
        if let Err(e) = read_frame_by(s, &mut buf, MAX_GREETING, by) {
            refuse(&e);
            return None;
        }
        let link = match Link::open(&buf, secret, &ch.nonce) {
            Ok(l) => l,
            Err(e) => {
                refuse(&e);
                return None;
            }
        };
        if link.rank != prev || link.fingerprint != fingerprint || link.session != session {
            refuse(&format!(
                "link from rank {} (expected rank {prev} of this job and rendezvous)",
                link.rank
            ));
            return None;
        }
        write_frame(s, &Linked { rank }.seal(secret, &link.nonce)).ok()?;
        Some(())
    };
    let got = accept_greetings(data, deadline, cancel, greet, |s, _, ()| Some(s))?;
    let s = got.ok_or_else(|| CollectiveError::RendezvousTimeout {
        master: cfg.master.to_string(),
        timeout: cfg.rendezvous_timeout,
        detail: format!(
            "rank {prev} never connected to rank {rank} ({} other connection(s) to its data port refused)",
            refusals.count()
        ),
    })?;
    s.set_nonblocking(false).ok();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::read_frame;
    use std::io::{Read, Write};

    fn cfg(rank: usize, secret: &Secret) -> Config {
        Config::new(rank, 2, "127.0.0.1:1".parse().unwrap())
            .with_rendezvous_timeout(Duration::from_secs(20))
            .with_secret(secret.clone())
    }

    /// Connects to `addr`, reads the challenge, sends `link(challenge nonce)`; returns whether
    /// the acceptor answered (rather than closing the connection).
    fn try_link(addr: SocketAddr, link: impl FnOnce(&str) -> Vec<u8>) -> bool {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        read_frame(&mut s, &mut buf, MAX_GREETING).unwrap();
        let ch = Challenge::parse(&buf).unwrap();
        write_frame(&mut s, &link(&ch.nonce)).unwrap();
        read_frame(&mut s, &mut buf, MAX_GREETING).is_ok()
    }

    #[test]
    fn the_data_port_takes_only_the_authenticated_predecessor() {
        let secret = Secret::new("ring-link-test-secret").unwrap();
        let (c0, c1) = (cfg(0, &secret), cfg(1, &secret));
        let session = new_nonce();
        let data = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = data.local_addr().unwrap();
        let never = AtomicBool::new(false);
        let genuine = |nonce: &str| Link {
            rank: 0,
            fingerprint: c0.fingerprint(),
            session: session.clone(),
            nonce: nonce.to_string(),
        };
        std::thread::scope(|sc| {
            let acceptor = sc.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(20);
                accept_link(&c1, Some(&secret), &data, &session, deadline, &never)
            });
            // Rank 1's predecessor is rank 0. Refused: no MAC; a link recorded on another
            // connection (authenticated for another challenge); the right MAC for another
            // session; the wrong rank.
            let n = new_nonce();
            assert!(!try_link(addr, |_| genuine(&n).seal(None, &n)));
            let other = new_nonce();
            let recorded = genuine(&n).seal(Some(&secret), &other);
            assert!(!try_link(addr, |_| recorded));
            assert!(!try_link(addr, |ch| Link {
                session: new_nonce(),
                ..genuine(&n)
            }
            .seal(Some(&secret), ch)));
            assert!(!try_link(addr, |ch| Link {
                rank: 1,
                ..genuine(&n)
            }
            .seal(Some(&secret), ch)));
            // The real predecessor gets through and learns who accepted it.
            let addrs = [addr, addr];
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut next = dial_link(&c0, Some(&secret), &addrs, &session, deadline).unwrap();
            let mut prev = acceptor.join().unwrap().unwrap();
            next.write_all(b"ring").unwrap();
            let mut got = [0u8; 4];
            prev.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ring");
        });
    }
}
