//! `train_ncf --netns`: the launcher brings the shaped testbed up, runs every algorithm with
//! each rank in its own namespace and the switch (authenticated) in the switch namespace,
//! prints the table with the bit-identity verdict, and leaves no namespace behind, also when
//! interrupted. Skips (with a message) without root, network namespaces, or the `sketchreduce`
//! binary of this build.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `sketchreduce` next to this build's binaries (cargo builds it for the cli's tests).
fn switch_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("sketchreduce");
    p.is_file().then_some(p)
}

fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    if !sketchreduce_examples::testbed::is_root() {
        return Some("needs root (network namespaces, tc)".into());
    }
    let probe = format!("skprobe{}", std::process::id() % 10_000);
    let add = Command::new("ip").args(["netns", "add", &probe]).output();
    match add {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        }
        Ok(o) => {
            return Some(format!(
                "cannot create network namespaces ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return Some(format!("no `ip` ({e})")),
    }
    if switch_bin().is_none() {
        return Some(
            "the sketchreduce binary of this build is missing (cargo build -p sketchreduce-cli)"
                .into(),
        );
    }
    None
}

/// A small job in the testbed `prefix`/`subnet`.
fn train_ncf(prefix: &str, subnet: &str, iters: usize, out: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train_ncf"));
    c.args(["--workers", "2", "--compare", "--quiet", "--netns"])
        .args(["--iters", &iters.to_string(), "--eval-every", "1000"])
        .args([
            "--users", "2000", "--items", "500", "--dim", "8", "--batch", "64",
        ])
        .args(["--netns-prefix", prefix, "--netns-subnet", subnet])
        .arg("--switch-bin")
        .arg(switch_bin().expect("checked"))
        .arg("--out-dir")
        .arg(out);
    c
}

/// Removes a testbed the launcher failed to remove, so a failing test leaves nothing behind.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/netbench/netns.sh");
        let _ = Command::new("bash")
            .arg(script)
            .args(["down", "--force", "--prefix", &self.0])
            .output();
    }
}

#[test]
fn netns_compare_runs_every_algorithm_in_namespaces_and_tears_down() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let pid = std::process::id();
    let prefix = format!("skl{}", pid % 100_000);
    let subnet = format!("10.236.{}", pid % 100);
    let _cleanup = Cleanup(prefix.clone());
    let out_dir = std::env::temp_dir().join(format!("sr-netns-launch-{pid}"));
    let out = train_ncf(&prefix, &subnet, 3, &out_dir)
        .output()
        .expect("run train_ncf");
    let _ = std::fs::remove_dir_all(&out_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("every rank in its own network namespace, links 1gbit"),
        "{stdout}"
    );
    assert!(
        stdout.contains("final parameters bit-identical across algorithms: YES"),
        "{stdout}"
    );
    assert!(stdout.contains("bound: links shaped to 1gbit"), "{stdout}");
    // The switch ran in its namespace, with a secret, and innet went through it: 3 steps of
    // 3 gradient operations (item table, user table, MLP bucket).
    assert!(stderr.contains("(authenticated)"), "{stderr}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{stdout}"))
            .to_string()
    };
    assert!(row("innet").ends_with("9/0/0"), "{}", row("innet"));
    assert!(row("ring").ends_with("0/9/0"), "{}", row("ring"));
    assert!(row("allgather").ends_with("0/0/9"), "{}", row("allgather"));
    row("auto");
    // Rank 0 and rank 1 reached each other across the bridge (the rendezvous is on rank 0's
    // namespace address).
    assert!(stderr.contains(&format!("MASTER {subnet}.1:")), "{stderr}");
    assert!(
        namespaces(&prefix).is_empty(),
        "left behind: {:?}",
        namespaces(&prefix)
    );
}

#[test]
fn netns_launcher_interrupted_tears_the_testbed_down() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let pid = std::process::id();
    let prefix = format!("ski{}", pid % 100_000);
    let subnet = format!("10.236.{}", pid % 100 + 100);
    let _cleanup = Cleanup(prefix.clone());
    let out_dir = std::env::temp_dir().join(format!("sr-netns-int-{pid}"));
    let mut child = train_ncf(&prefix, &subnet, 100_000, &out_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn train_ncf");
    // Wait until the ranks of the first run are up in their namespaces.
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                let started = l.starts_with("[launcher] innet:");
                seen.push(l);
                if started {
                    break;
                }
            }
            Err(_) if t0.elapsed() > Duration::from_secs(120) => {
                let _ = child.kill();
                panic!("the innet run did not start: {seen:?}");
            }
            Err(_) => {}
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(namespaces(&prefix).len(), 3, "the testbed is up");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let t1 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if t1.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the launcher did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_dir_all(&out_dir);
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(
        namespaces(&prefix).is_empty(),
        "left behind: {:?}",
        namespaces(&prefix)
    );
    // Nothing of the run survives the namespaces (ranks, the switch).
    let ps = Command::new("pgrep")
        .args(["-f", "--", &format!("--netns-prefix {prefix}")])
        .output()
        .expect("pgrep");
    let left: Vec<&str> = std::str::from_utf8(&ps.stdout)
        .unwrap_or("")
        .lines()
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
}
