//! The test harness shared by the end-to-end tests: network namespaces with one worker per
//! namespace, linked to a switch namespace that runs either the software switch (behind a
//! Linux bridge) or bmv2 `simple_switch` (with the control host on one of its ports), helper
//! processes (this test binary re-executed inside a namespace), nftables loss, and logs that a
//! failing test prints.
//!
//! Layout (`T` is a per-topology tag, so tests in one binary do not collide):
//! - namespace `srp4-T-sw`: the switch. Its address, as workers see it, is `10.0.0.254` with
//!   MAC `02:00:00:00:00:fe`: the bridge's (emulator), or the veth `Tc0` whose peer `Tc1`
//!   is bmv2 port 0 (bmv2; the control plane listens there and talks to `simple_switch` on
//!   its Thrift port through `simple_switch_CLI`).
//! - namespace `srp4-T-wR` for rank `R`: veth `ThR` with `10.0.0.(R+1)/24` and MAC
//!   `02:00:00:00:00:(R+1)`, peer `TsR` in the switch namespace (bmv2 port `R+1`).
//! - static ARP entries everywhere: the P4 program does not flood broadcasts.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Prints a skip notice straight to the process's stderr, bypassing libtest's output capture,
/// so a skipped check is visible in a plain `cargo test` run.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The switch's address as workers see it.
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
/// The switch's MAC as workers see it.
pub const SWITCH_MAC: &str = "02:00:00:00:00:fe";
/// Thrift port of simple_switch inside the switch namespace.
pub const THRIFT_PORT: u16 = 9090;
/// Control endpoint port.
pub const CONTROL_PORT: u16 = sketchreduce_wire::DEFAULT_CONTROL_PORT;
/// Shared secret of the control endpoint in the tests (it listens on a non-loopback address,
/// where authentication is mandatory).
pub const SECRET: &str = "srp4-test-secret-0123456789abcdef";

/// Serialises the tests that run switches: bmv2 and the workers share two cores.
pub static HEAVY: Mutex<()> = Mutex::new(());

/// Locks [`HEAVY`], ignoring poisoning by a failed test.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The full path of `tool` if it is on `PATH`.
pub fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs a command; `Ok(stdout)` or `Err` with the command line and its stderr.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Whether this process may create network namespaces (iproute2 present, root or
/// CAP_NET_ADMIN). Probed once per process (tests run in parallel).
pub fn can_create_netns() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        if on_path("ip").is_none() {
            return false;
        }
        let name = format!("srp4-probe-{}", std::process::id());
        if sh(&["ip", "netns", "add", &name]).is_err() {
            return false;
        }
        let _ = sh(&["ip", "netns", "del", &name]);
        true
    })
}

/// Why the bmv2 tests cannot run here, if they cannot.
pub fn bmv2_missing() -> Option<String> {
    for tool in ["p4c", "simple_switch", "simple_switch_CLI"] {
        if on_path(tool).is_none() {
            return Some(format!("{tool} not found"));
        }
    }
    if !can_create_netns() {
        return Some("cannot create network namespaces (needs iproute2 and root)".into());
    }
    None
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("srp4-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The repository's `p4/` directory.
pub fn p4_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("p4")
}

/// Compiles the program for bmv2/v1model into `out`, generated for `lanes` lanes (the
/// committed generated file when it is the default, else a regenerated copy); returns the
/// JSON path.
pub fn compile(out: &Path, lanes: u16) -> Result<PathBuf, String> {
    let src = if lanes == sketchreduce_p4gen::DEFAULT_LANES {
        p4_dir()
    } else {
        let d = out.join(format!("src-{lanes}"));
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        std::fs::copy(
            p4_dir().join(sketchreduce_p4gen::PROGRAM_FILE),
            d.join(sketchreduce_p4gen::PROGRAM_FILE),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            d.join(sketchreduce_p4gen::GENERATED_FILE),
            sketchreduce_p4gen::generate_headers(lanes),
        )
        .map_err(|e| e.to_string())?;
        d
    };
    let o = Command::new("p4c")
        .args(["--target", "bmv2", "--arch", "v1model", "-o"])
        .arg(out)
        .arg(src.join(sketchreduce_p4gen::PROGRAM_FILE))
        .output()
        .map_err(|e| format!("running p4c: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        return Err(format!("p4c failed:\n{text}"));
    }
    let json = out.join("sketchreduce.json");
    if !json.is_file() {
        return Err(format!("p4c did not write {}:\n{text}", json.display()));
    }
    Ok(json)
}

/// Which switch a topology runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// The software switch (`sketchreduce switch`), behind a Linux bridge.
    Emulator,
    /// bmv2 `simple_switch` running this compiled program, driven by the P4 control plane.
    Bmv2 {
        /// p4c's output.
        json: PathBuf,
    },
}

/// A helper process: this test binary re-executed in a namespace to run one ignored test.
pub struct Helper {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Helper {
    /// Its log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for it to exit; `Ok(log)` if it succeeded and printed `ok_mark`.
    pub fn wait(mut self, timeout: Duration, ok_mark: &str) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "{} timed out after {timeout:?}; its log:\n{}",
                        self.name,
                        tail(&self.log(), 60)
                    ));
                }
                Err(e) => return Err(format!("{}: {e}", self.name)),
            }
        };
        let log = self.log();
        if status.success() && log.contains(ok_mark) {
            Ok(log)
        } else {
            Err(format!(
                "{} failed ({status}); its log:\n{}",
                self.name,
                tail(&log, 80)
            ))
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Namespaces, links, the switch and its control plane; torn down on drop.
pub struct Topology {
    /// The tag in every namespace and interface name.
    pub tag: String,
    /// Number of worker namespaces.
    pub workers: usize,
    /// Which switch.
    pub switch: Switch,
    /// Where logs go.
    pub dir: PathBuf,
    namespaces: Vec<String>,
    procs: Vec<Helper>,
    simple_switch: Option<Child>,
}

static TOPOLOGIES: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// The switch namespace.
    pub fn ns_switch(&self) -> String {
        format!("srp4-{}-sw", self.tag)
    }

    /// Rank `r`'s namespace.
    pub fn ns_worker(&self, r: usize) -> String {
        format!("srp4-{}-w{}", self.tag, r + 1)
    }

    /// Rank `r`'s address.
    pub fn worker_ip(r: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, r as u8 + 1)
    }

    /// Rank `r`'s MAC.
    pub fn worker_mac(r: usize) -> String {
        format!("02:00:00:00:00:{:02x}", r + 1)
    }

    /// Rank `r`'s bmv2 port.
    pub fn worker_port(r: usize) -> u16 {
        r as u16 + 1
    }

    /// The port map of a bmv2 topology: every worker and the control host (port 0).
    pub fn port_map_json(&self) -> String {
        let mut hosts: Vec<String> = (0..self.workers)
            .map(|r| {
                format!(
                    r#"{{"ip": "{}", "mac": "{}", "port": {}}}"#,
                    Self::worker_ip(r),
                    Self::worker_mac(r),
                    Self::worker_port(r)
                )
            })
            .collect();
        hosts.push(format!(
            r#"{{"ip": "{SWITCH_IP}", "mac": "{SWITCH_MAC}", "port": 0}}"#
        ));
        format!("{{\"hosts\": [{}]}}", hosts.join(", "))
    }

    fn run(&self, args: &[&str]) -> Result<(), String> {
        sh(args).map(|_| ())
    }

    /// Builds the namespaces and links and starts `simple_switch` (bmv2). The switch's
    /// control plane is started separately ([`Topology::spawn`] of a helper in
    /// [`Topology::ns_switch`]).
    pub fn up(switch: Switch, workers: usize, dir: &Path) -> Result<Topology, String> {
        let n = TOPOLOGIES.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{:x}", (std::process::id() * 8 + n) % 0xfffff);
        let mut t = Topology {
            tag,
            workers,
            switch,
            dir: dir.to_path_buf(),
            namespaces: Vec::new(),
            procs: Vec::new(),
            simple_switch: None,
        };
        t.build()
            .map_err(|e| format!("building the topology: {e}"))?;
        Ok(t)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        let _ = sh(&["ip", "netns", "del", ns]);
        self.run(&["ip", "netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        self.run(&["ip", "-n", ns, "link", "set", "lo", "up"])
    }

    fn build(&mut self) -> Result<(), String> {
        let sw = self.ns_switch();
        self.add_ns(&sw)?;
        let sw_ip = format!("{SWITCH_IP}/24");
        let bmv2 = matches!(self.switch, Switch::Bmv2 { .. });
        let local_if = if bmv2 {
            // The control host: Tc0 (kernel side, the switch address) <-> Tc1 (bmv2 port 0).
            let (c0, c1) = (format!("{}c0", self.tag), format!("{}c1", self.tag));
            self.run(&[
                "ip", "-n", &sw, "link", "add", &c0, "type", "veth", "peer", "name", &c1,
            ])?;
            self.run(&["ip", "-n", &sw, "link", "set", &c0, "address", SWITCH_MAC])?;
            self.run(&["ip", "-n", &sw, "addr", "add", &sw_ip, "dev", &c0])?;
            for i in [&c0, &c1] {
                self.run(&["ip", "-n", &sw, "link", "set", i, "up"])?;
            }
            c0
        } else {
            let br = format!("{}br", self.tag);
            self.run(&["ip", "-n", &sw, "link", "add", &br, "type", "bridge"])?;
            self.run(&["ip", "-n", &sw, "link", "set", &br, "address", SWITCH_MAC])?;
            self.run(&["ip", "-n", &sw, "addr", "add", &sw_ip, "dev", &br])?;
            self.run(&["ip", "-n", &sw, "link", "set", &br, "up"])?;
            br
        };
        for r in 0..self.workers {
            let ns = self.ns_worker(r);
            self.add_ns(&ns)?;
            let (h, s) = (
                format!("{}h{}", self.tag, r + 1),
                format!("{}s{}", self.tag, r + 1),
            );
            self.run(&["ip", "link", "add", &s, "type", "veth", "peer", "name", &h])?;
            self.run(&["ip", "link", "set", &s, "netns", &sw])?;
            self.run(&["ip", "link", "set", &h, "netns", &ns])?;
            self.run(&[
                "ip",
                "-n",
                &ns,
                "link",
                "set",
                &h,
                "address",
                &Self::worker_mac(r),
            ])?;
            self.run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", Self::worker_ip(r)),
                "dev",
                &h,
            ])?;
            self.run(&["ip", "-n", &ns, "link", "set", &h, "up"])?;
            if !bmv2 {
                self.run(&["ip", "-n", &sw, "link", "set", &s, "master", &local_if])?;
            }
            self.run(&["ip", "-n", &sw, "link", "set", &s, "up"])?;
            // Static neighbours: the switch address and every other worker.
            let mut neigh = vec![(SWITCH_IP.to_string(), SWITCH_MAC.to_string())];
            neigh.extend(
                (0..self.workers)
                    .filter(|o| *o != r)
                    .map(|o| (Self::worker_ip(o).to_string(), Self::worker_mac(o))),
            );
            for (ip, mac) in neigh {
                self.run(&[
                    "ip",
                    "-n",
                    &ns,
                    "neigh",
                    "replace",
                    &ip,
                    "lladdr",
                    &mac,
                    "dev",
                    &h,
                    "nud",
                    "permanent",
                ])?;
            }
            self.run(&[
                "ip",
                "-n",
                &sw,
                "neigh",
                "replace",
                &Self::worker_ip(r).to_string(),
                "lladdr",
                &Self::worker_mac(r),
                "dev",
                &local_if,
                "nud",
                "permanent",
            ])?;
            if bmv2 {
                for (n, i) in [(&ns, &h), (&sw, &s)] {
                    offloads_off(n, i)?;
                }
            }
        }
        if bmv2 {
            offloads_off(&sw, &format!("{}c0", self.tag))?;
            offloads_off(&sw, &format!("{}c1", self.tag))?;
            self.start_simple_switch()?;
        }
        Ok(())
    }

    fn start_simple_switch(&mut self) -> Result<(), String> {
        let Switch::Bmv2 { json } = &self.switch else {
            return Ok(());
        };
        let sw = self.ns_switch();
        // bmv2 appends ".txt" to the log file name.
        let log = self.dir.join("simple_switch.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &sw, "simple_switch", "--thrift-port"])
            .arg(THRIFT_PORT.to_string())
            .args(["-i", &format!("0@{}c1", self.tag)]);
        for r in 0..self.workers {
            cmd.args([
                "-i",
                &format!("{}@{}s{}", Self::worker_port(r), self.tag, r + 1),
            ]);
        }
        cmd.arg("--log-file").arg(&log).arg(json);
        let out =
            std::fs::File::create(self.dir.join("simple_switch.out")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting simple_switch: {e}"))?;
        self.simple_switch = Some(child);
        // Wait for its Thrift server.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .simple_switch
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "simple_switch exited at start ({status}): {}",
                    self.simple_switch_log()
                ));
            }
            let probe = sh(&[
                "ip",
                "netns",
                "exec",
                &sw,
                "sh",
                "-c",
                &format!("echo show_ports | simple_switch_CLI --thrift-port {THRIFT_PORT}"),
            ]);
            if probe.as_ref().is_ok_and(|o| o.contains("port #")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "simple_switch did not come up: {probe:?}\n{}",
                    self.simple_switch_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The end of simple_switch's log (empty for the emulator).
    pub fn simple_switch_log(&self) -> String {
        let mut s = String::new();
        for f in [
            "simple_switch.out",
            "simple_switch.log.txt",
            "simple_switch.log",
        ] {
            if let Ok(t) = std::fs::read_to_string(self.dir.join(f)) {
                s.push_str(&format!("--- {f} (last lines) ---\n{}\n", tail(&t, 40)));
            }
        }
        s
    }

    /// Starts this test binary in namespace `ns`, running the ignored test `test` with `env`.
    pub fn spawn(
        &mut self,
        ns: &str,
        test: &str,
        name: &str,
        env: &[(&str, String)],
    ) -> Result<&mut Helper, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&exe)
            .args([
                "--exact",
                test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SRP4_HELPER", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| format!("spawning {name}: {e}"))?;
        self.procs.push(Helper {
            name: name.to_string(),
            child,
            log,
        });
        Ok(self.procs.last_mut().unwrap())
    }

    /// Starts a helper like [`Topology::spawn`] and hands it over (to wait for it).
    pub fn start(
        &mut self,
        ns: &str,
        test: &str,
        name: &str,
        env: &[(&str, String)],
    ) -> Result<Helper, String> {
        self.spawn(ns, test, name, env)?;
        Ok(self.procs.pop().unwrap())
    }

    /// Drops `percent` % of the sketchreduce datagrams in both directions on rank `r`'s link
    /// (nftables `numgen random` in its namespace; netem does not exist on this kernel).
    pub fn add_loss(&self, r: usize, percent: u32) -> Result<(), String> {
        if on_path("nft").is_none() {
            return Err("nft not found".into());
        }
        let ns = self.ns_worker(r);
        let data = format!(
            "{}-{}",
            sketchreduce_wire::DEFAULT_DATA_PORT,
            sketchreduce_wire::DEFAULT_DATA_PORT + sketchreduce_wire::DATA_PORT_COUNT - 1
        );
        let rules = [
            "add table inet srp4loss".to_string(),
            "add chain inet srp4loss out { type filter hook output priority 0 ; }".to_string(),
            "add chain inet srp4loss in { type filter hook input priority 0 ; }".to_string(),
            format!("add rule inet srp4loss out udp dport {data} numgen random mod 100 < {percent} drop"),
            format!("add rule inet srp4loss in udp sport {data} numgen random mod 100 < {percent} drop"),
        ];
        for r in &rules {
            sh(&["ip", "netns", "exec", &ns, "nft", r])?;
        }
        Ok(())
    }

    /// Removes the loss rules of rank `r` (if any).
    pub fn clear_loss(&self, r: usize) {
        let _ = sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns_worker(r),
            "nft",
            "delete table inet srp4loss",
        ]);
    }

    /// The logs of every helper still held and of the switch, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            s.push_str(&format!(
                "--- {} (last lines) ---\n{}\n",
                p.name,
                tail(&p.log(), 40)
            ));
        }
        s.push_str(&self.simple_switch_log());
        s
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.procs.clear();
        if let Some(mut c) = self.simple_switch.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = sh(&["ip", "netns", "del", &ns]);
        }
    }
}

/// Turns off checksum and segmentation offloads of interface `iface` in namespace `ns` (the
/// ethtool ioctls, so that ethtool need not be installed). bmv2 reads and writes raw frames:
/// with offloads on, a veth hands it TCP segments with partial checksums and GSO super-frames
/// larger than the MTU, which it would forward as they are and the receiver would drop.
pub fn offloads_off(ns: &str, iface: &str) -> Result<(), String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    // ethtool commands (linux/ethtool.h): set rx/tx checksumming, scatter-gather, TSO, GSO,
    // GRO; and get tx checksumming to check.
    const SET: [(u32, &str); 6] = [
        (0x15, "rx checksumming"),
        (0x17, "tx checksumming"),
        (0x19, "scatter-gather"),
        (0x1f, "TSO"),
        (0x24, "GSO"),
        (0x2c, "GRO"),
    ];
    const GTXCSUM: u32 = 0x16;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let path = format!("/var/run/netns/{ns}");
    let iface = iface.to_string();
    std::thread::spawn(move || -> Result<(), String> {
        let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd; it affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a plain datagram socket for the ioctls, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let call = |cmd: u32, data: u32| -> Result<u32, std::io::Error> {
            let mut v = EthtoolValue { cmd, data };
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                data: &mut v,
                _pad: [0; 16],
            };
            for (d, b) in req
                .name
                .iter_mut()
                .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
            {
                *d = b as libc::c_char;
            }
            // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_value.
            if unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(v.data)
        };
        let mut result = Ok(());
        for (cmd, what) in SET {
            // Some may be fixed for a device (EOPNOTSUPP); checksumming must go off.
            if let Err(e) = call(cmd, 0) {
                if cmd == 0x17 {
                    result = Err(format!("{iface}: turning off {what}: {e}"));
                }
            }
        }
        if result.is_ok() {
            match call(GTXCSUM, 0) {
                Ok(0) => {}
                Ok(_) => result = Err(format!("{iface}: tx checksumming is still on")),
                Err(e) => result = Err(format!("{iface}: reading tx checksumming: {e}")),
            }
        }
        // SAFETY: closing the socket opened above.
        unsafe { libc::close(fd) };
        result
    })
    .join()
    .map_err(|_| "offloads thread panicked".to_string())?
}

/// The test secret.
pub fn secret() -> sketchreduce_control::Secret {
    sketchreduce_control::Secret::new(SECRET.as_bytes().to_vec()).expect("test secret")
}

/// The control endpoint as workers see it.
pub fn control_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::new(SWITCH_IP.into(), CONTROL_PORT)
}

/// An authenticated control connection, waiting up to 90 s for the endpoint (bmv2's control
/// plane resets the switch before it listens).
pub fn control_client() -> sketchreduce_control::Client {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match sketchreduce_control::Client::connect(
            control_addr(),
            Some(std::sync::Arc::new(secret())),
            Duration::from_secs(30),
        ) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("control endpoint not ready: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("control endpoint: {e}"),
        }
    }
}

/// Body of a helper process in the switch namespace: the software switch on the switch
/// address (2 data threads, authenticated control endpoint), until killed.
pub fn serve_emulator() {
    let cfg = sketchreduce_switch::SwitchConfig {
        listen: std::net::SocketAddr::new(SWITCH_IP.into(), sketchreduce_wire::DEFAULT_DATA_PORT),
        threads: 2,
        slots: 1024,
        control: Some(control_addr()),
        secret: Some(std::sync::Arc::new(secret())),
        ..Default::default()
    };
    let _sw = sketchreduce_switch::spawn_switch(cfg).expect("starting the software switch");
    println!("SRP4-SWITCH-READY");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Body of a helper process in the switch namespace: the bmv2 control plane
/// (`sketchreduce p4 control`'s library) on the switch address, with simple_switch_CLI on
/// the local Thrift port and the port map in `SRP4_PORTS`, until killed.
pub fn serve_bmv2_control() {
    let ports = sketchreduce_p4gen::portmap::PortMap::parse(&env::<String>("SRP4_PORTS"))
        .expect("port map");
    let running = sketchreduce_p4gen::control::start(sketchreduce_p4gen::control::ControlOptions {
        runtime: sketchreduce_p4gen::runtime::SwitchCli::new(THRIFT_PORT),
        ports,
        listen: control_addr(),
        secret: Some(secret()),
        jobs: Vec::new(),
        server: sketchreduce_control::ServerConfig {
            sweep_interval: sketchreduce_p4gen::control::SWEEP_INTERVAL,
            ..Default::default()
        },
    })
    .expect("starting the bmv2 control plane");
    println!("SRP4-CONTROL-READY {}", running.local_addr());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Reads a `SRP4_*` variable of a helper process.
pub fn env<T: std::str::FromStr>(name: &str) -> T {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} not set"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not valid"))
}

/// Whether this process is a helper started by [`Topology::spawn`] (ignored tests run by hand
/// do nothing).
pub fn is_helper() -> bool {
    std::env::var_os("SRP4_HELPER").is_some()
}
