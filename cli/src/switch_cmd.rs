//! `sketchreduce switch`: run the software switch (UDP data ports, TCP control endpoint,
//! optional QUIC endpoint) until Ctrl-C / SIGTERM, then log and print the final counters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sketchreduce_switch::{spawn_switch, QuicSettings, SwitchConfig};
use sketchreduce_wire::{JobFile, DEFAULT_DATA_PORT};

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// First UDP data port (`IP:PORT`); the switch binds PORT..PORT+threads.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_DATA_PORT)))]
    pub listen: SocketAddr,
    /// Data threads = data ports (1..=16); slot s is served by port PORT + s % threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Slots in the pool.
    #[arg(long, default_value_t = 4096)]
    pub slots: u32,
    /// Job file (JSON, `{"jobs": [...]}`) registered at start.
    #[arg(long)]
    pub jobs: Option<PathBuf>,
    /// TCP control endpoint [default: listen IP, port PORT+16, i.e. 39440].
    #[arg(long)]
    pub control: Option<SocketAddr>,
    /// QUIC endpoint (UDP `IP:PORT`); requires --cert-dir.
    #[arg(long, requires = "cert_dir")]
    pub quic: Option<SocketAddr>,
    /// Directory of the QUIC certificate and key (generated on first use).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Seconds between counter logs (info level; 0 = only at shutdown).
    #[arg(long, default_value_t = 10)]
    pub stats_interval: u64,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    let jobs = match &args.jobs {
        Some(p) => JobFile::load(p)?.jobs,
        None => Vec::new(),
    };
    let quic = match (args.quic, &args.cert_dir) {
        (Some(listen), Some(dir)) => Some(QuicSettings {
            listen,
            cert_dir: dir.clone(),
        }),
        (Some(_), None) => anyhow::bail!("--quic needs --cert-dir"),
        _ => None,
    };
    let cfg = SwitchConfig {
        listen: args.listen,
        threads: args.threads,
        slots: args.slots,
        control: args.control,
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
        "switch: data {} (+{} ports), control {}, {} slots",
        sw.local_data_addr(),
        sw.data_ports(),
        sw.control_addr(),
        sw.slots()
    );
    if let (Some(addr), Some(fp)) = (sw.quic_addr(), sw.fingerprint()) {
        tracing::info!(%addr, fingerprint = fp, "QUIC endpoint");
        println!("quic: {addr}");
        println!("quic fingerprint: {fp}");
    }
    for j in sw.core().jobs() {
        println!(
            "job {}: {} workers, {} lanes, slots {}..{}",
            j.id,
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
