//! Real worker *processes* (this test binary re-executed as a worker): killing one worker
//! mid-run, and a run across network namespaces with kernel-level random loss (nftables).

mod common;
use common::reference;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sketchreduce_agent::{bind_udp, Agent, AgentConfig, AgentError, AggConfig, UdpTransport};
use sketchreduce_codec::synth::{generate, Pattern, SynthSpec};
use sketchreduce_switch::{spawn_switch, SwitchConfig};
use sketchreduce_wire::{JobSpec, WorkerSpec};

fn env<T: std::str::FromStr>(k: &str) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("missing or bad {k}"))
}

/// Entry point of a worker process; a no-op in a normal test run.
#[test]
fn worker_process_entry() {
    if std::env::var("SKR_WORKER").is_err() {
        return;
    }
    let bind: IpAddr = env("SKR_BIND");
    let control: SocketAddr = env("SKR_CONTROL");
    let rank: usize = env("SKR_RANK");
    let workers: usize = env("SKR_WORKERS");
    let iters: usize = env("SKR_ITERS");
    let dim: usize = env("SKR_DIM");
    let timeout: u64 = env("SKR_TIMEOUT_MS");
    let sock = bind_udp(SocketAddr::new(bind, 0)).unwrap();
    println!("SKR addr {}", sock.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let job: JobSpec = serde_json::from_str(line.trim()).unwrap();
    let t = UdpTransport::new(sock, control).unwrap();
    let cfg = AgentConfig {
        agg: AggConfig::with_timeout(Duration::from_millis(timeout)),
        ..Default::default()
    };
    let mut a = Agent::new(t, &job, rank as u8, cfg).unwrap();
    for it in 0..iters {
        let grads = generate(&SynthSpec {
            dim,
            workers,
            density: 0.01,
            overlap: 0.5,
            pattern: Pattern::Random,
            seed: 7 + it as u64,
        })
        .unwrap();
        let want = reference(&grads).1;
        match a.all_reduce(3, &grads[rank]) {
            Ok(r) => {
                let mut got = vec![0i64; dim];
                r.to_dense_sums(&mut got).unwrap();
                println!("SKR iter {it} exact {}", got == want);
            }
            Err(e) => {
                let missing = match &e {
                    AgentError::SlotTimeout { missing, .. } => format!("{missing:?}"),
                    _ => "-".into(),
                };
                println!("SKR error missing={missing} {e}");
                std::io::stdout().flush().unwrap();
                return;
            }
        }
        std::io::stdout().flush().unwrap();
    }
    println!("SKR done retransmissions={}", a.stats().agg.retransmissions);
}

/// A worker process and a thread forwarding its `SKR ` lines.
struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_worker(prefix: &[String], vars: &[(&str, String)]) -> Worker {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new(&prefix[0]);
    c.args(&prefix[1..])
        .arg(exe)
        .args([
            "worker_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SKR_WORKER", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in vars {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn worker");
    let out: ChildStdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            // libtest may print "test name ... " on the same line first.
            if let Some(at) = l.find("SKR ") {
                if tx.send(l[at + 4..].to_string()).is_err() {
                    break;
                }
            }
        }
    });
    Worker { child, lines: rx }
}

fn next_line(w: &Worker, within: Duration) -> String {
    w.lines
        .recv_timeout(within)
        .unwrap_or_else(|e| panic!("no line from worker within {within:?}: {e}"))
}

fn start_job(ws: &mut [Worker], id: u16) -> (JobSpec, Vec<SocketAddr>) {
    let addrs: Vec<SocketAddr> = ws
        .iter()
        .map(|w| {
            let l = next_line(w, Duration::from_secs(30));
            l.strip_prefix("addr ").unwrap().parse().unwrap()
        })
        .collect();
    let job = JobSpec {
        id,
        epoch: 0, // assigned by the switch (create or join)
        lanes: 128,
        slot_base: 0,
        slot_count: 64,
        workers: addrs.iter().map(|&addr| WorkerSpec::at(addr)).collect(),
    };
    (job, addrs)
}

fn send_job(ws: &mut [Worker], job: &JobSpec) {
    let line = serde_json::to_string(job).unwrap();
    for w in ws.iter_mut() {
        let s = w.child.stdin.as_mut().unwrap();
        writeln!(s, "{line}").unwrap();
        s.flush().unwrap();
    }
}

#[test]
fn killed_worker_process_is_named_by_the_others() {
    let sw = spawn_switch(SwitchConfig::loopback(1, 256)).unwrap();
    let n = 3;
    let timeout = Duration::from_millis(2000);
    let mut ws: Vec<Worker> = (0..n)
        .map(|r| {
            spawn_worker(
                &["env".to_string()],
                &[
                    ("SKR_BIND", "127.0.0.1".into()),
                    ("SKR_CONTROL", sw.control_addr().to_string()),
                    ("SKR_RANK", r.to_string()),
                    ("SKR_WORKERS", n.to_string()),
                    ("SKR_ITERS", "100000".into()),
                    ("SKR_DIM", "20000".into()),
                    ("SKR_TIMEOUT_MS", timeout.as_millis().to_string()),
                ],
            )
        })
        .collect();
    let (job, _) = start_job(&mut ws, 9);
    send_job(&mut ws, &job);
    // Let everybody complete a few all-reduces, then kill rank 1 mid-run.
    for w in &ws {
        for _ in 0..3 {
            let l = next_line(w, Duration::from_secs(30));
            assert!(l.ends_with("exact true"), "{l}");
        }
    }
    ws[1].child.kill().unwrap();
    let killed = Instant::now();
    for r in [0, 2] {
        let err = loop {
            let l = next_line(&ws[r], timeout + Duration::from_secs(5));
            if l.starts_with("error") {
                break l;
            }
            assert!(l.ends_with("exact true"), "{l}");
        };
        let took = killed.elapsed();
        assert!(
            took < timeout + Duration::from_secs(2),
            "rank {r} took {took:?}"
        );
        assert!(err.contains("missing=Some([1])"), "rank {r}: {err}");
        assert!(err.contains("job 9") && err.contains("round"), "{err}");
    }
}

/// Namespaces, veth pairs and a bridge; everything is deleted on drop (also on panic).
struct NetnsGuard {
    namespaces: Vec<String>,
    bridge: String,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn setup_namespaces(n: usize, subnet: u8) -> Result<NetnsGuard, String> {
    let pid = std::process::id();
    let mut g = NetnsGuard {
        namespaces: Vec::new(),
        bridge: format!("skb{pid}"),
    };
    sh(&["ip", "link", "add", &g.bridge, "type", "bridge"])?;
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("10.213.{subnet}.254/24"),
        "dev",
        &g.bridge,
    ])?;
    sh(&["ip", "link", "set", &g.bridge, "up"])?;
    for i in 0..n {
        let ns = format!("skrns{pid}w{i}");
        sh(&["ip", "netns", "add", &ns])?;
        g.namespaces.push(ns.clone());
        let (a, b) = (format!("skv{pid}a{i}"), format!("skv{pid}b{i}"));
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
        sh(&["ip", "link", "set", &a, "master", &g.bridge])?;
        sh(&["ip", "link", "set", &a, "up"])?;
        sh(&["ip", "link", "set", &b, "netns", &ns])?;
        let ip = format!("10.213.{subnet}.{}/24", i + 1);
        sh(&[
            "ip", "netns", "exec", &ns, "ip", "addr", "add", &ip, "dev", &b,
        ])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &b, "up"])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
    }
    Ok(g)
}

#[test]
fn namespaces_with_kernel_random_loss_are_exact() {
    let n = 3;
    let subnet = (std::process::id() % 200 + 20) as u8;
    let guard = match setup_namespaces(n, subnet) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipped: cannot create network namespaces ({e})");
            return;
        }
    };
    let sw_ip: IpAddr = format!("10.213.{subnet}.254").parse().unwrap();
    let mut cfg = SwitchConfig::loopback(2, 256);
    cfg.listen = SocketAddr::new(sw_ip, 0);
    // The workers reach the control endpoint over the bridge: not loopback, so authenticated.
    const SECRET: &str = "processes-test-secret-0123456789";
    cfg.control = Some(SocketAddr::new(sw_ip, 0));
    cfg.secret = Some(std::sync::Arc::new(
        sketchreduce_control::Secret::new(SECRET).unwrap(),
    ));
    let sw = spawn_switch(cfg).unwrap();
    let mut ws: Vec<Worker> = (0..n)
        .map(|r| {
            spawn_worker(
                &[
                    "ip".into(),
                    "netns".into(),
                    "exec".into(),
                    guard.namespaces[r].clone(),
                ],
                &[
                    ("SKR_BIND", format!("10.213.{subnet}.{}", r + 1)),
                    ("SKETCHREDUCE_SECRET", SECRET.into()),
                    ("SKR_CONTROL", sw.control_addr().to_string()),
                    ("SKR_RANK", r.to_string()),
                    ("SKR_WORKERS", n.to_string()),
                    ("SKR_ITERS", "3".into()),
                    ("SKR_DIM", "200000".into()),
                    ("SKR_TIMEOUT_MS", "20000".into()),
                ],
            )
        })
        .collect();
    let (job, addrs) = start_job(&mut ws, 4);
    // 5% random loss in both directions inside worker 0's namespace, in the kernel.
    let dp = sw.local_data_addr().port();
    let rules = format!(
        "table inet skrloss {{\n\
           chain in {{ type filter hook input priority 0; policy accept; udp dport {} numgen random mod 100 < 5 counter drop; }}\n\
           chain out {{ type filter hook output priority 0; policy accept; udp dport {}-{} numgen random mod 100 < 5 counter drop; }}\n\
         }}\n",
        addrs[0].port(),
        dp,
        dp + sw.data_ports() - 1
    );
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &guard.namespaces[0], "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    nft.stdin
        .as_mut()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft rules refused");
    send_job(&mut ws, &job);
    for (r, w) in ws.iter().enumerate() {
        for it in 0..3 {
            let l = next_line(w, Duration::from_secs(60));
            assert_eq!(l, format!("iter {it} exact true"), "rank {r}");
        }
        let done = next_line(w, Duration::from_secs(10));
        assert!(done.starts_with("done"), "{done}");
    }
    let listing = Command::new("ip")
        .args([
            "netns",
            "exec",
            &guard.namespaces[0],
            "nft",
            "list",
            "table",
            "inet",
            "skrloss",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    let dropped: u64 = text
        .split("counter packets ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "the kernel dropped nothing?\n{text}");
    eprintln!("nftables dropped {dropped} datagrams in worker 0's namespace");
    drop(ws);
    drop(sw);
    drop(guard);
}
