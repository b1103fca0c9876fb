//! `sketchreduce switch`: run the software switch (UDP data ports, control endpoint, optional
//! QUIC endpoint) until Ctrl-C / SIGTERM, then log and print the final counters; or, with a
//! subcommand, talk to a running switch's control endpoint (`info`, `counters`, `join`,
//! `unregister`) for scripts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sketchreduce_control::{Client, Secret};
use sketchreduce_switch::{spawn_switch, QuicSettings, SwitchConfig};
use sketchreduce_wire::control::DEFAULT_MAX_JOBS;
use sketchreduce_wire::{JobFile, DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT, MAX_LANES};

/// Arguments: run a switch, or one control request.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// A request to a running switch instead of running one.
    #[command(subcommand)]
    pub request: Option<Ctl>,
    /// How to run the switch.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Running a switch.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// First UDP data port (`IP:PORT`); the switch binds PORT..PORT+threads.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_DATA_PORT)))]
    pub listen: SocketAddr,
    /// Data threads = data ports (1..=16); slot s is served by port PORT + s % threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Slots in the pool (slots × 2 × max-lanes × 4 bytes of registers must stay ≤ 1 GiB).
    #[arg(long, default_value_t = 4096)]
    pub slots: u32,
    /// Largest lane count a job may use (32..2048, a power of two); sizes the registers.
    #[arg(long, default_value_t = MAX_LANES)]
    pub max_lanes: u16,
    /// Most jobs at once.
    #[arg(long, default_value_t = DEFAULT_MAX_JOBS)]
    pub max_jobs: usize,
    /// Job file (JSON, `{"jobs": [...]}`, each with its nonzero epoch) installed at start.
    #[arg(long)]
    pub jobs: Option<PathBuf>,
    /// TCP control endpoint [default: 127.0.0.1:PORT+16, i.e. 127.0.0.1:39440]. Any
    /// non-loopback address needs a secret.
    #[arg(long)]
    pub control: Option<SocketAddr>,
    /// File holding the control secret (≥ 16 bytes; one trailing newline ignored) [default:
    /// $SKETCHREDUCE_SECRET_FILE, else $SKETCHREDUCE_SECRET, else none: auth off].
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// QUIC endpoint (UDP `IP:PORT`); requires --cert-dir.
    #[arg(long, requires = "cert_dir")]
    pub quic: Option<SocketAddr>,
    /// Directory of the QUIC certificate and key (generated on first use).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Require QUIC clients to present a certificate listed in FILE: one SHA-256 fingerprint
    /// (64 hex digits, as `sketchreduce quic fingerprint --dir D` prints a worker's) per line,
    /// `#` comments and blank lines allowed. Other clients fail the TLS handshake. An empty or
    /// malformed file is a startup error. Without it, only the switch is authenticated by TLS.
    #[arg(long, value_name = "FILE", requires = "quic")]
    pub quic_client_fingerprints: Option<PathBuf>,
    /// Seconds between counter logs (info level; 0 = only at shutdown).
    #[arg(long, default_value_t = 10)]
    pub stats_interval: u64,
}

/// Where and how to reach a running switch.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The switch's control endpoint.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_CONTROL_PORT)))]
    pub control: SocketAddr,
    /// File holding the control secret [default: $SKETCHREDUCE_SECRET_FILE, else
    /// $SKETCHREDUCE_SECRET].
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Seconds to wait for the switch.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

/// One control request; the answer is printed as JSON on stdout.
#[derive(clap::Subcommand, Debug)]
pub enum Ctl {
    /// The switch's ports, pool size and limits.
    Info(CtlArgs),
    /// Every counter (global and per job).
    Counters(CtlArgs),
    /// A registered job's spec, with its epoch.
    Join {
        /// Job id.
        #[arg(long)]
        job: u16,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// Remove a job (it must still have this epoch).
    Unregister {
        /// Job id.
        #[arg(long)]
        job: u16,
        /// The job's epoch.
        #[arg(long)]
        epoch: u32,
        #[command(flatten)]
        ctl: CtlArgs,
    },
}

/// The secret from `--secret-file`, else from the environment.
fn load_secret(file: Option<&PathBuf>) -> anyhow::Result<Option<Arc<Secret>>> {
    let s = match file {
        Some(p) => Some(Secret::from_file(p)?),
        None => Secret::from_env()?,
    };
    Ok(s.map(Arc::new))
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.request {
        Some(ctl) => request(ctl),
        None => run_switch(args.run),
    }
}

fn request(ctl: Ctl) -> anyhow::Result<()> {
    let a = match &ctl {
        Ctl::Info(a) | Ctl::Counters(a) => a,
        Ctl::Join { ctl, .. } | Ctl::Unregister { ctl, .. } => ctl,
    };
    let secret = load_secret(a.secret_file.as_ref())?;
    let mut c = Client::connect(a.control, secret, Duration::from_secs(a.timeout))
        .with_context(|| format!("connecting to the switch's control endpoint {}", a.control))?;
    let out = match ctl {
        Ctl::Info(_) => serde_json::to_string(&c.info()?)?,
        Ctl::Counters(_) => serde_json::to_string(&c.counters()?)?,
        Ctl::Join { job, .. } => serde_json::to_string(&c.join(job)?)?,
        Ctl::Unregister { job, epoch, .. } => {
            c.unregister(job, epoch)?;
            serde_json::json!({"ok": true}).to_string()
        }
    };
    println!("{out}");
    Ok(())
}

fn run_switch(args: RunArgs) -> anyhow::Result<()> {
    let jobs = match &args.jobs {
        Some(p) => JobFile::load(p)?.jobs,
        None => Vec::new(),
    };
    let client_allow = match &args.quic_client_fingerprints {
        Some(p) => Some(
            sketchreduce_quic::ClientAllowList::load(p)
                .with_context(|| format!("--quic-client-fingerprints {}", p.display()))?,
        ),
        None => None,
    };
    let allowed_clients = client_allow.as_ref().map(|a| a.fingerprints().len());
    let quic = match (args.quic, &args.cert_dir) {
        (Some(listen), Some(dir)) => Some(QuicSettings {
            listen,
            cert_dir: dir.clone(),
            client_allow,
        }),
        (Some(_), None) => anyhow::bail!("--quic needs --cert-dir"),
        _ => None,
    };
    let secret = load_secret(args.secret_file.as_ref())?;
    let cfg = SwitchConfig {
        listen: args.listen,
        threads: args.threads,
        slots: args.slots,
        max_lanes: args.max_lanes,
        max_jobs: args.max_jobs,
        control: args.control,
        secret,
        quic,
        jobs,
        stats_interval: (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval)),
        ..Default::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C / SIGTERM handler")?;
    }
    let sw = spawn_switch(cfg).context("starting the switch")?;
    println!(
        "switch: data {} (+{} ports), control {}{}, {} slots",
        sw.local_data_addr(),
        sw.data_ports(),
        sw.control_addr(),
        if sw.plane().info().auth {
            " (authenticated)"
        } else {
            " (no auth)"
        },
        sw.slots()
    );
    if let (Some(addr), Some(fp)) = (sw.quic_addr(), sw.fingerprint()) {
        tracing::info!(%addr, fingerprint = fp, "QUIC endpoint");
        println!("quic: {addr}");
        println!("quic fingerprint: {fp}");
        if let Some(n) = allowed_clients {
            println!("quic client certificates: required, {n} allowed");
        }
    }
    for j in sw.plane().jobs() {
        println!(
            "job {}: epoch {}, {} workers, {} lanes, slots {}..{}",
            j.id,
            j.epoch,
            j.workers.len(),
            j.lanes,
            j.slot_base,
            j.slot_base as u64 + j.slot_count as u64
        );
    }
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("shutting down");
    let counters = sw.shutdown();
    println!(
        "final counters: {}",
        serde_json::to_string(&counters).unwrap_or_default()
    );
    Ok(())
}
