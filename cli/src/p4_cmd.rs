//! `sketchreduce p4 …`: generation of the P4 program's generated part, the offline bmv2
//! (`simple_switch_CLI`) configuration for a job file, and the live control plane of a bmv2
//! switch (`p4 control`). See `p4/README.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sketchreduce_control::Secret;
use sketchreduce_p4gen::control::{start, ControlOptions};
use sketchreduce_p4gen::portmap::PortMap;
use sketchreduce_p4gen::runtime::SwitchCli;
use sketchreduce_p4gen::{
    generate_config, generate_headers, ConfigOptions, DEFAULT_LANES, GENERATED_FILE, POOL_SLOTS,
};
use sketchreduce_wire::{JobFile, DEFAULT_CONTROL_PORT, LANE_CHOICES};

/// P4 subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum P4Command {
    /// Regenerate the generated part of the P4 program (`sketchreduce_gen.p4`).
    Gen {
        /// Lanes per packet the program is compiled for (one of the wire format's lane
        /// choices, 32..=2048; above 256 the links need jumbo frames). Packets with another
        /// lane count are dropped as `bad_lanes`. The committed file uses 64.
        #[arg(long, default_value_t = DEFAULT_LANES)]
        lanes: u16,
        /// Directory to write `sketchreduce_gen.p4` into (default: the repository's `p4/`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the simple_switch_CLI commands configuring a freshly started bmv2 switch for a
    /// static job file (offline; `p4 control --jobs` does the same on a running switch).
    Config {
        /// Job file (the same JSON switch-emu reads; every worker needs `mac` and `port`).
        #[arg(long)]
        jobs: PathBuf,
        /// Lanes per packet the loaded program was generated for.
        #[arg(long, default_value_t = DEFAULT_LANES)]
        lanes: u16,
    },
    /// Serve control protocol v2 (the emulator's: info, create/replace, join, unregister,
    /// counters, leases, HMAC auth) for a running simple_switch, applying jobs through its
    /// runtime CLI. Takes the switch over: its tables, registers, counters and multicast
    /// groups are reset at start.
    Control(ControlArgs),
}

/// Arguments of `p4 control`.
#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    /// Control endpoint (TCP). Workers use it as `SKETCHREDUCE_SWITCH`, and send their data
    /// to its IP address, so it must be the switch's address as workers see it (the host of
    /// this process sits on a switch port with that address; see p4/README.md).
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_CONTROL_PORT)))]
    listen: SocketAddr,
    /// Port map (JSON): every host on the switch's ports, `{"hosts": [{"ip", "mac", "port"}]}`.
    /// Workers are placed on switch ports by their IPv4 address; every host gets an L2 entry.
    #[arg(long)]
    ports: PathBuf,
    /// simple_switch's Thrift port.
    #[arg(long, default_value_t = 9090)]
    thrift_port: u16,
    /// The runtime CLI command (split at spaces), e.g. "ip netns exec sw simple_switch_CLI".
    #[arg(long, default_value = "simple_switch_CLI")]
    cli: String,
    /// Seconds a runtime CLI batch may take.
    #[arg(long, default_value_t = 60)]
    cli_timeout: u64,
    /// Static job file (explicit epochs, no lease), installed at start.
    #[arg(long)]
    jobs: Option<PathBuf>,
    /// File with the control endpoint's shared secret (≥ 16 bytes); else
    /// SKETCHREDUCE_SECRET_FILE or SKETCHREDUCE_SECRET. Required unless --listen is loopback.
    #[arg(long)]
    secret_file: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(cmd: P4Command) -> anyhow::Result<()> {
    match cmd {
        P4Command::Gen { lanes, out } => gen(lanes, out),
        P4Command::Config { jobs, lanes } => config(&jobs, lanes),
        P4Command::Control(a) => control(a),
    }
}

fn check_lanes(lanes: u16) -> anyhow::Result<()> {
    if !LANE_CHOICES.contains(&lanes) {
        bail!("--lanes {lanes}: the P4 program supports {LANE_CHOICES:?}");
    }
    Ok(())
}

/// `p4/` of the current directory if it holds the program, else the repository's `p4/` as
/// seen when this binary was built.
fn default_p4_dir() -> anyhow::Result<PathBuf> {
    let local = PathBuf::from("p4");
    if local.join(sketchreduce_p4gen::PROGRAM_FILE).is_file() {
        return Ok(local);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("p4");
    if repo.join(sketchreduce_p4gen::PROGRAM_FILE).is_file() {
        return Ok(repo);
    }
    bail!("cannot find the p4/ directory (run from the repository root or pass --out DIR)")
}

fn gen(lanes: u16, out: Option<PathBuf>) -> anyhow::Result<()> {
    check_lanes(lanes)?;
    let dir = match out {
        Some(d) => d,
        None => default_p4_dir()?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(GENERATED_FILE);
    let text = generate_headers(lanes);
    let unchanged = std::fs::read_to_string(&path).is_ok_and(|old| old == text);
    if !unchanged {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "{} {} ({lanes} lanes)",
        if unchanged { "unchanged" } else { "wrote" },
        path.display()
    );
    if lanes != DEFAULT_LANES {
        eprintln!(
            "note: the committed p4/{GENERATED_FILE} is generated for {DEFAULT_LANES} lanes; \
             pass --lanes {lanes} to `sketchreduce p4 config` as well"
        );
    }
    Ok(())
}

fn config(jobs: &Path, lanes: u16) -> anyhow::Result<()> {
    check_lanes(lanes)?;
    let file = JobFile::load(jobs)?;
    let text = generate_config(
        &file,
        &ConfigOptions {
            lanes,
            pool_slots: POOL_SLOTS,
        },
    )
    .with_context(|| format!("job file {}", jobs.display()))?;
    print!("{text}");
    Ok(())
}

fn control(a: ControlArgs) -> anyhow::Result<()> {
    let secret = match &a.secret_file {
        Some(p) => Some(Secret::from_file(p)?),
        None => Secret::from_env()?,
    };
    let ports = PortMap::load(&a.ports)?;
    let jobs = match &a.jobs {
        Some(p) => JobFile::load(p)?.jobs,
        None => Vec::new(),
    };
    let program: Vec<String> = a.cli.split_whitespace().map(str::to_string).collect();
    if program.is_empty() {
        bail!("--cli is empty");
    }
    let runtime = SwitchCli {
        program,
        thrift_port: a.thrift_port,
        timeout: Duration::from_secs(a.cli_timeout.max(1)),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C / SIGTERM handler")?;
    }
    let running = start(ControlOptions {
        runtime,
        ports,
        listen: a.listen,
        secret,
        jobs,
        server: sketchreduce_control::ServerConfig {
            sweep_interval: sketchreduce_p4gen::control::SWEEP_INTERVAL,
            ..Default::default()
        },
    })?;
    let info = sketchreduce_control::Backend::info(running.plane.backend());
    println!(
        "p4 control: endpoint {}, switch on thrift port {}: {} lanes, {} slots, data ports {}..{}",
        running.local_addr(),
        a.thrift_port,
        info.max_lanes,
        info.slots,
        info.data_port,
        info.data_port + info.data_ports - 1
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("shutting down");
    Ok(())
}
