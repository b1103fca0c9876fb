//! `benches/netbench/netns.sh`, the testbed of `benches/netbench/run`: links shaped on both
//! ends, nftables loss that really drops, teardown that leaves nothing, and a clear refusal
//! without root. Skips (with a message) where namespaces cannot be created.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/netbench/netns.sh")
}

fn netns(args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .output()
        .expect("run netns.sh")
}

fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

/// Tears the testbed down even when an assertion fails.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = netns(&["down", "--prefix", &self.0]);
    }
}

#[test]
fn testbed_shapes_both_ends_drops_with_nftables_and_tears_down() {
    let pid = std::process::id();
    let prefix = format!("nbt{}", pid % 100_000);
    let subnet = format!("10.232.{}", pid % 200 + 20);
    let up = netns(&[
        "up", "--prefix", &prefix, "--ranks", "2", "--rate", "100mbit", "--loss", "50", "--subnet",
        &subnet, "--mtu", "9000",
    ]);
    if !up.status.success() {
        let err = String::from_utf8_lossy(&up.stderr);
        let _ = netns(&["down", "--prefix", &prefix]);
        if err.contains("needs root")
            || err.contains("not found")
            || err.contains("Operation not permitted")
        {
            eprintln!("skipped: cannot create network namespaces ({})", err.trim());
            return;
        }
        panic!("netns.sh up failed: {err}");
    }
    let _down = Down(prefix.clone());
    let mut names = namespaces(&prefix);
    names.sort();
    assert_eq!(
        names,
        [
            format!("{prefix}-r0"),
            format!("{prefix}-r1"),
            format!("{prefix}-sw")
        ]
    );
    let mtu = Command::new("ip")
        .args(["-n", &format!("{prefix}-r0"), "link", "show", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&mtu.stdout).contains("mtu 9000"));

    // 400 UDP datagrams from rank 0 to rank 1 and 400 to the switch's address: half of each
    // vanish where they arrive (rank 1's eth0, the switch's bridge), after leaving rank 0
    // through its uplink, as behind a lossy link (the sender sees no error).
    let send = format!(
        "for i in $(seq 400); do echo x > /dev/udp/{subnet}.2/9; echo x > /dev/udp/{subnet}.254/9; done"
    );
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{prefix}-r0"),
            "bash",
            "-c",
            &send,
        ])
        .status()
        .unwrap();
    assert!(st.success(), "sends fail when the drop is at the sender");
    let stats = netns(&["stats", "--prefix", &prefix]);
    assert!(stats.status.success());
    let v: Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    let links = v["links"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    let link = |r: u64| links.iter().find(|l| l["rank"] == r).unwrap();
    // Rank 1's link: half of what arrived for it. Rank 0's: half of its datagrams at the
    // switch, plus half of the ICMP port-unreachable replies coming back to it.
    let dropped = link(1)["nft_drops"].as_u64().unwrap();
    assert!((100..=300).contains(&dropped), "50 % of 400? {dropped}");
    let dropped = link(0)["nft_drops"].as_u64().unwrap();
    assert!(
        (100..=700).contains(&dropped),
        "50 % of 400 and replies? {dropped}"
    );
    for l in links {
        for side in ["up", "down"] {
            let q = &l[side][0];
            assert_eq!(q["kind"], "tbf", "{l}");
            assert_eq!(q["options"]["rate"], 12_500_000, "100mbit in bytes/s: {l}");
        }
    }
    // Every datagram left rank 0 through its uplink qdisc (ARP aside).
    assert!(link(0)["up"][0]["packets"].as_u64().unwrap() >= 800);

    // Loss off: nothing more is dropped.
    assert!(netns(&["loss", "--prefix", &prefix, "--loss", "0"])
        .status
        .success());
    let v: Value = serde_json::from_slice(&netns(&["stats", "--prefix", &prefix]).stdout).unwrap();
    assert_eq!(v["links"][0]["nft_drops"], 0);

    assert!(netns(&["down", "--prefix", &prefix]).status.success());
    assert!(namespaces(&prefix).is_empty());
    // Idempotent.
    assert!(netns(&["down", "--prefix", &prefix]).status.success());
}

#[test]
fn without_root_it_says_so_and_fails() {
    let probe = Command::new("setpriv").arg("--version").output();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    if probe.is_err() || root.ok() != Some(true) {
        eprintln!("skipped: needs root and setpriv to drop privileges");
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(script())
        .args(["up", "--prefix", "nbtnoroot"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
}
