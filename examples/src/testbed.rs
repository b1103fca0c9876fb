//! The shaped network-namespace testbed of `--netns`: one namespace per rank, each linked to a
//! Linux bridge in a switch namespace by a veth pair shaped with tbf in both directions (set up
//! and torn down by `benches/netbench/netns.sh`), and the software switch
//! (`sketchreduce switch`) in the switch namespace with its control endpoint on the bridge,
//! authenticated with a per-run secret.
//!
//! The testbed is removed when the [`Testbed`] is dropped (normal exit, errors, panics) and on
//! Ctrl-C / SIGTERM / SIGHUP (a handler runs the same teardown, then exits with 130).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// First UDP data port of the switch (its control endpoint is this + 16, as the CLI's
/// defaults).
const DATA_PORT: u16 = 39424;

/// What the signal handler needs to tear the testbed down.
#[derive(Clone)]
struct Teardown {
    script: PathBuf,
    prefix: String,
    owner: u32,
    secret_dir: PathBuf,
}

impl Teardown {
    fn run(&self) {
        // netns.sh also kills whatever still runs in the namespaces (ranks, the switch).
        let _ = Command::new("bash")
            .arg(&self.script)
            .args(["down", "--prefix", &self.prefix, "--owner"])
            .arg(self.owner.to_string())
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.secret_dir);
    }
}

/// The testbed the signal handler removes (at most one per process).
static ACTIVE: Mutex<Option<Teardown>> = Mutex::new(None);

fn install_signal_handler() -> Result<()> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = ctrlc::set_handler(|| {
            // Held until the process exits: the main thread, which sees its ranks die, blocks
            // in `Testbed::drop` instead of exiting half-way through the teardown.
            let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = active.take() {
                eprintln!("\n[launcher] interrupted: tearing the testbed down");
                t.run();
            }
            std::process::exit(130);
        });
    });
    res.context("installing the Ctrl-C / SIGTERM handler")
}

/// Options of the testbed.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// `netns.sh`.
    pub script: PathBuf,
    /// Namespace prefix.
    pub prefix: String,
    /// First three octets of the /24.
    pub subnet: String,
    /// tbf rate (tc units).
    pub rate: String,
    /// Rank namespaces.
    pub ranks: usize,
}

/// A running testbed (see the module docs).
pub struct Testbed {
    cfg: TestbedConfig,
    teardown: Teardown,
    secret: PathBuf,
    switch: Option<Child>,
}

/// Whether this process runs as root (namespaces and tc need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Bits per second of a tc rate (`1gbit`, `100mbit`, `500kbit`, `1000000bit`, `1gibit`).
pub fn rate_bps(rate: &str) -> Option<f64> {
    let r = rate.trim().to_ascii_lowercase();
    let num_end = r
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(r.len());
    let (num, unit) = r.split_at(num_end);
    let v: f64 = num.parse().ok()?;
    let mult = match unit {
        "bit" | "" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "kibit" => 1024.0,
        "mibit" => 1024.0 * 1024.0,
        "gibit" => 1024.0 * 1024.0 * 1024.0,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return None,
    };
    (v > 0.0).then_some(v * mult)
}

/// 32 random bytes from the kernel, hex: the switch's control secret for one run.
fn random_secret() -> Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Testbed {
    /// Brings the testbed up (removing a leftover of the same prefix whose owner is gone) and
    /// writes the run's secret.
    pub fn up(cfg: TestbedConfig) -> Result<Testbed> {
        if !is_root() {
            bail!("--netns needs root (network namespaces, tc); run as root, or without --netns for loopback");
        }
        if !cfg.script.is_file() {
            bail!(
                "testbed script {} not found (--netns-script)",
                cfg.script.display()
            );
        }
        if rate_bps(&cfg.rate).is_none() {
            bail!(
                "--netns-rate {:?}: expected a tc rate such as 1gbit or 100mbit",
                cfg.rate
            );
        }
        let owner = std::process::id();
        let secret_dir = std::env::temp_dir().join(format!("sketchreduce-testbed-{owner}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&secret_dir)
            .with_context(|| format!("creating {}", secret_dir.display()))?;
        let teardown = Teardown {
            script: cfg.script.clone(),
            prefix: cfg.prefix.clone(),
            owner,
            secret_dir: secret_dir.clone(),
        };
        // From here on the guard (or the signal handler) removes whatever exists.
        install_signal_handler()?;
        *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(teardown.clone());
        let tb = Testbed {
            secret: secret_dir.join("secret"),
            cfg,
            teardown,
            switch: None,
        };
        let st = Command::new("bash")
            .arg(&tb.cfg.script)
            .args(["up", "--prefix", &tb.cfg.prefix, "--ranks"])
            .arg(tb.cfg.ranks.to_string())
            .args([
                "--rate",
                &tb.cfg.rate,
                "--subnet",
                &tb.cfg.subnet,
                "--owner",
            ])
            .arg(owner.to_string())
            .status()
            .context("running netns.sh up")?;
        if !st.success() {
            bail!("netns.sh up failed ({st})");
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tb.secret)
            .with_context(|| format!("creating {}", tb.secret.display()))?;
        f.write_all(random_secret()?.as_bytes())?;
        Ok(tb)
    }

    /// The configuration.
    pub fn config(&self) -> &TestbedConfig {
        &self.cfg
    }

    /// Namespace of rank `r`.
    pub fn rank_ns(&self, r: usize) -> String {
        format!("{}-r{r}", self.cfg.prefix)
    }

    /// Address of rank `r` (eth0 of its namespace).
    pub fn rank_ip(&self, r: usize) -> String {
        format!("{}.{}", self.cfg.subnet, r + 1)
    }

    /// The control secret file the ranks pass to the switch (SKETCHREDUCE_SECRET_FILE).
    pub fn secret_file(&self) -> &Path {
        &self.secret
    }

    /// `program` run in rank `r`'s namespace (the environment is passed through).
    pub fn rank_command(&self, r: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.rank_ns(r)]).arg(program);
        c
    }

    /// Starts `sketchreduce switch` in the switch namespace, data on the bridge at port
    /// 39424, control at 39440 with the run's secret (any non-loopback control endpoint needs
    /// one), its log in `log`; returns the control address the ranks use.
    pub fn start_switch(&mut self, bin: &Path, log: &Path) -> Result<String> {
        if !bin.is_file() {
            bail!(
                "{} not found: build it (cargo build --release -p sketchreduce-cli) or pass --switch-bin",
                bin.display()
            );
        }
        let ip = format!("{}.254", self.cfg.subnet);
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-sw", self.cfg.prefix)])
            .arg(bin)
            .arg("switch")
            .args(["--listen", &format!("{ip}:{DATA_PORT}")])
            .args(["--control", &format!("{ip}:{}", DATA_PORT + 16)])
            .arg("--secret-file")
            .arg(&self.secret)
            .args(["--stats-interval", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("starting sketchreduce switch in the switch namespace")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            // "switch: data IP:PORT (+k ports), control IP:PORT (authenticated), N slots"
            let mut r = BufReader::new(out);
            r.read_line(&mut line)?;
            // Keep draining it (it prints its final counters at shutdown).
            std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
        }
        self.switch = Some(child);
        let control = line
            .split("control ")
            .nth(1)
            .and_then(|s| s.split([' ', ',']).next())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        match control {
            Some(c) => Ok(c),
            None => {
                // Let it finish writing its error before quoting the log.
                if let Some(sw) = self.switch.as_mut() {
                    let _ = sw.wait();
                }
                let err = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "the switch did not start (first line {:?}; {}: {})",
                    line.trim(),
                    log.display(),
                    err.trim()
                )
            }
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(mut sw) = self.switch.take() {
            let _ = sw.kill();
            let _ = sw.wait();
        }
        // Holding the lock through the teardown keeps the signal handler from exiting
        // half-way through it (and blocks here while the handler tears down).
        let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(active.as_ref(), Some(t) if t.prefix == self.teardown.prefix) {
            active.take();
            self.teardown.run();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rate_bps;

    #[test]
    fn tc_rates() {
        assert_eq!(rate_bps("1gbit"), Some(1e9));
        assert_eq!(rate_bps("100mbit"), Some(1e8));
        assert_eq!(rate_bps("2.5Gbit"), Some(2.5e9));
        assert_eq!(rate_bps("1000bit"), Some(1e3));
        assert_eq!(rate_bps("1mibit"), Some(1048576.0));
        assert_eq!(rate_bps("10mbps"), Some(8e7));
        assert_eq!(rate_bps("fast"), None);
        assert_eq!(rate_bps("1 furlong"), None);
        assert_eq!(rate_bps("0gbit"), None);
    }
}
