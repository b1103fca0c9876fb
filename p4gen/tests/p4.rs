//! Static tests of the P4 program and its offline configuration, and its compilation:
//!
//! - the committed `p4/sketchreduce_gen.p4` is what the generator produces now;
//! - the configuration for the 4-worker example job (golden checks) and its error cases;
//! - the names the control plane uses exist in `p4/sketchreduce.p4`;
//! - with `p4c` on PATH: the program compiles for bmv2/v1model, for every lane count a
//!   default build uses, and the control plane reads what it needs from the JSON (else
//!   "skipped: p4c not found").
//!
//! The end-to-end tests through `simple_switch` are in `bmv2_raw.rs`, `conformance.rs` and
//! `stack.rs`.

mod common;

use std::collections::BTreeSet;

use sketchreduce_p4gen::program::ProgramInfo;
use sketchreduce_p4gen::{
    generate_config, generate_headers, names, ConfigError, ConfigOptions, DEFAULT_LANES,
    GENERATED_FILE, POOL_SLOTS, PROGRAM_FILE,
};
use sketchreduce_wire::{JobFile, WorkerSpec};

use common::p4_dir;

fn example_jobs() -> JobFile {
    JobFile::load(&p4_dir().join("example-jobs.json")).expect("p4/example-jobs.json")
}

/// The P4 source without `//` and `/* */` comments.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[test]
fn generated_file_is_up_to_date() {
    let path = p4_dir().join(GENERATED_FILE);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let now = generate_headers(DEFAULT_LANES);
    assert!(
        committed == now,
        "{} is out of date with the wire spec: run `sketchreduce p4 gen` \
         (cargo run -p sketchreduce-cli -- p4 gen) and commit the result",
        path.display()
    );
}

#[test]
fn p4_sources_are_balanced_and_include_the_generated_file() {
    for file in [PROGRAM_FILE, GENERATED_FILE] {
        let src = std::fs::read_to_string(p4_dir().join(file)).unwrap();
        let code = strip_comments(&src);
        for (open, close) in [('{', '}'), ('(', ')'), ('[', ']')] {
            let mut depth = 0i64;
            for c in code.chars() {
                if c == open {
                    depth += 1;
                } else if c == close {
                    depth -= 1;
                }
                assert!(depth >= 0, "{file}: unbalanced {close}");
            }
            assert_eq!(depth, 0, "{file}: unbalanced {open}{close}");
        }
    }
    let main = std::fs::read_to_string(p4_dir().join(PROGRAM_FILE)).unwrap();
    assert!(main.contains(&format!("#include \"{GENERATED_FILE}\"")));
    assert!(main.contains("#include <v1model.p4>"));
    assert!(main.contains("mark_to_drop(standard_metadata)"));
    assert!(!strip_comments(&main).contains("mark_to_drop()"));
}

/// The tables, actions, registers and counters the config generator and the README name
/// exist in the program under the control and local names bmv2 derives them from.
#[test]
fn config_names_exist_in_program() {
    let main = strip_comments(&std::fs::read_to_string(p4_dir().join(PROGRAM_FILE)).unwrap());
    let control_of = |full: &str| -> (String, String) {
        let (c, l) = full.split_once('.').unwrap();
        (c.to_string(), l.to_string())
    };
    // Byte range of `control NAME(` … up to the next top-level `control` or `V1Switch`.
    let control_body = |control: &str| -> String {
        let start = main
            .find(&format!("control {control}("))
            .unwrap_or_else(|| panic!("no control {control}"));
        let rest = &main[start + 8..];
        let end = rest
            .find("\ncontrol ")
            .or_else(|| rest.find("\nV1Switch"))
            .unwrap();
        rest[..end].to_string()
    };
    for t in names::TABLES {
        let (c, l) = control_of(t);
        assert!(
            control_body(&c).contains(&format!("table {l} {{")),
            "table {t} not found"
        );
    }
    for (a, params) in [
        (names::SET_JOB, 7),
        (names::SET_RANK, 4),
        (names::L2_FORWARD, 1),
        (names::SET_DST, 3),
    ] {
        let (c, l) = control_of(a);
        let body = control_body(&c);
        let at = body
            .find(&format!("action {l}("))
            .unwrap_or_else(|| panic!("action {a} not found"));
        let sig = &body[at..at + body[at..].find(')').unwrap()];
        assert_eq!(
            sig.matches("bit<").count(),
            params,
            "action {a} parameter count"
        );
    }
    for r in names::REGISTERS {
        let (c, l) = control_of(r);
        let body = control_body(&c);
        assert!(
            body.contains(&format!("(SR_REG_SIZE) {l};")),
            "register {r}"
        );
    }
    for k in names::COUNTERS {
        let (c, l) = control_of(k);
        let body = control_body(&c);
        assert!(
            body.contains(&format!("CounterType.packets) {l};")),
            "counter {k}"
        );
    }
}

#[test]
fn config_for_four_worker_job() {
    let jobs = example_jobs();
    assert_eq!(jobs.jobs[0].workers.len(), 4);
    let cfg = generate_config(&jobs, &ConfigOptions::default()).unwrap();
    let lines: Vec<&str> = cfg.lines().collect();
    let has = |l: &str| lines.contains(&l);

    // Job table: id => epoch workers lanes slot_base slot_count mcast_grp job_index.
    assert!(has(
        "table_add SrIngress.sr_jobs SrIngress.sr_set_job 1 => 305419896 4 64 0 8 1 0"
    ));
    // Rank table: (job, rank) => registered MAC, IPv4, UDP port, switch port.
    for rank in 0..4 {
        assert!(has(&format!(
            "table_add SrIngress.sr_ranks SrIngress.sr_set_rank 1 {rank} => 02:00:00:00:00:0{} 10.0.0.{} 40000 {}",
            rank + 1,
            rank + 1,
            rank + 1
        )));
    }
    // The job's counters (index 0: 0..16) and its multicast replica counter are zeroed.
    for i in 0..16 {
        assert!(has(&format!("counter_write SrIngress.sr_job {i} 0 0")));
    }
    assert!(has("counter_write SrEgress.sr_tx_mcast 0 0 0"));
    // Multicast group 1 with one node per worker: rid = 1 + rank, on the worker's port;
    // node handles 0..3 in creation order.
    assert!(has("mc_mgrp_create 1"));
    for rank in 0..4 {
        assert!(has(&format!("mc_node_create {} {}", rank + 1, rank + 1)));
        assert!(has(&format!("mc_node_associate 1 {rank}")));
        assert!(has(&format!(
            "table_add SrEgress.sr_mcast_dst SrEgress.sr_set_dst {} {} => 02:00:00:00:00:0{} 10.0.0.{} 40000",
            rank + 1,
            rank + 1,
            rank + 1,
            rank + 1
        )));
        assert!(has(&format!(
            "table_add SrIngress.sr_l2 SrIngress.sr_l2_forward 02:00:00:00:00:0{} => {}",
            rank + 1,
            rank + 1
        )));
    }
    // Every node create is followed by its association.
    let creates: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("mc_node_create"))
        .map(|(i, _)| i)
        .collect();
    for i in creates {
        assert!(lines[i + 1].starts_with("mc_node_associate 1 "));
    }
    // Slot reset: round, bitmap, count of both sets of slots 0..8 (indices 0..16), all
    // before the job entry makes the job visible.
    for reg in [names::REG_ROUND, names::REG_BITMAP, names::REG_COUNT] {
        let idx: BTreeSet<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("register_write {reg} ")))
            .map(|rest| {
                let (i, v) = rest.split_once(' ').unwrap();
                assert_eq!(v, "0");
                i.parse().unwrap()
            })
            .collect();
        assert_eq!(idx, (0..16).collect::<BTreeSet<u32>>(), "{reg}");
    }
    let job_line = lines
        .iter()
        .position(|l| l.starts_with("table_add SrIngress.sr_jobs"))
        .unwrap();
    let last_other = lines
        .iter()
        .rposition(|l| !l.starts_with("table_add SrIngress.sr_l2 "))
        .unwrap();
    assert_eq!(
        last_other, job_line,
        "the job entry comes after everything of the job"
    );
    // 48 register resets, 17 counter resets, 1 group, 4 × (node, association, rewrite,
    // rank), 1 job entry, 4 L2 entries.
    assert_eq!(lines.len(), 48 + 17 + 1 + 16 + 1 + 4);
    // No comments or blank lines: simple_switch_CLI reads every line as a command.
    assert!(lines.iter().all(|l| !l.is_empty() && !l.starts_with('#')));
}

#[test]
fn config_allocates_groups_and_rids_per_job() {
    let mut jobs = example_jobs();
    let mut second = jobs.jobs[0].clone();
    second.id = 9;
    second.slot_base = 8;
    second.slot_count = 2;
    for w in &mut second.workers {
        w.addr.set_port(40001);
    }
    jobs.jobs.push(second);
    let cfg = generate_config(&jobs, &ConfigOptions::default()).unwrap();
    assert!(cfg.contains(
        "table_add SrIngress.sr_jobs SrIngress.sr_set_job 9 => 305419896 4 64 8 2 2 1\n"
    ));
    assert!(cfg.contains("mc_mgrp_create 2\n"));
    // Second job: rids 33..36, node handles 4..7.
    assert!(cfg.contains("mc_node_create 33 1\nmc_node_associate 2 4\n"));
    assert!(cfg.contains("mc_node_create 36 4\nmc_node_associate 2 7\n"));
    assert!(cfg.contains(
        "table_add SrEgress.sr_mcast_dst SrEgress.sr_set_dst 36 4 => 02:00:00:00:00:04 10.0.0.4 40001\n"
    ));
    // Shared workers: one L2 entry per MAC.
    assert_eq!(
        cfg.matches("SrIngress.sr_l2_forward 02:00:00:00:00:01 ")
            .count(),
        1
    );
    // Second job's slots 8..10: register indices 16..20.
    assert!(cfg.contains("register_write SrIngress.sr_count 19 0\n"));
    assert!(!cfg.contains("register_write SrIngress.sr_count 20 0\n"));
}

#[test]
fn config_errors_are_clear() {
    let opts = ConfigOptions::default();
    let base = example_jobs();

    // Workers need a MAC and a switch port (a static job file has no port map to take them
    // from); the error names the job, the rank and what is missing.
    let mut j = base.clone();
    j.jobs[0].workers[2].mac = None;
    let e = generate_config(&j, &opts).unwrap_err();
    assert!(matches!(e, ConfigError::Place(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("job 1, worker 2") && msg.contains("`mac`"),
        "{msg}"
    );

    let mut j = base.clone();
    j.jobs[0].workers[3].port = None;
    let msg = generate_config(&j, &opts).unwrap_err().to_string();
    assert!(msg.contains("worker 3") && msg.contains("`port`"), "{msg}");

    for bad in [
        WorkerSpec {
            addr: "10.0.0.2:40000".parse().unwrap(),
            mac: Some("02:00:00:00:01".into()),
            port: Some(2),
        },
        WorkerSpec {
            addr: "10.0.0.2:40000".parse().unwrap(),
            mac: Some("02:00:00:00:00:02".into()),
            port: Some(511),
        },
        WorkerSpec {
            addr: "[fd00::2]:40000".parse().unwrap(),
            mac: Some("02:00:00:00:00:02".into()),
            port: Some(2),
        },
        WorkerSpec {
            addr: "0.0.0.0:40000".parse().unwrap(),
            mac: Some("02:00:00:00:00:02".into()),
            port: Some(2),
        },
    ] {
        let mut j = base.clone();
        j.jobs[0].workers[1] = bad.clone();
        let e = generate_config(&j, &opts).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, ConfigError::Place(_) | ConfigError::Invalid(_))
                && (msg.contains("worker 1") || msg.contains("rank 1")),
            "{bad:?}: {e}"
        );
    }

    let mut j = base.clone();
    j.jobs[0].lanes = 128;
    let e = generate_config(&j, &opts).unwrap_err();
    assert!(matches!(e, ConfigError::LanesMismatch { .. }));
    assert!(e.to_string().contains("p4 gen --lanes 128"), "{e}");
    // …and fine for a program generated for 128 lanes.
    assert!(generate_config(&j, &ConfigOptions { lanes: 128, ..opts }).is_ok());

    let mut j = base.clone();
    j.jobs.push(j.jobs[0].clone());
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::DuplicateJob(1))
    ));

    let mut j = base.clone();
    let mut other = j.jobs[0].clone();
    other.id = 2;
    other.slot_base = 7;
    j.jobs.push(other);
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::Overlap(1, 2))
    ));

    let mut j = base.clone();
    j.jobs[0].slot_count = POOL_SLOTS + 1;
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::Invalid(_))
    ));

    let mut j = base.clone();
    let mut other = j.jobs[0].clone();
    other.id = 2;
    other.slot_base = 100;
    other.workers[0].port = Some(7);
    j.jobs.push(other);
    assert!(matches!(
        generate_config(&j, &opts),
        Err(ConfigError::MacConflict { a: 1, b: 7, .. })
    ));

    assert!(matches!(
        generate_config(&JobFile::default(), &opts),
        Err(ConfigError::NoJobs)
    ));
}

// ---------------------------------------------------------------------------------------------
// p4c, when present.
// ---------------------------------------------------------------------------------------------

/// Compiles the program (64 lanes, as committed, and 256, the lanes of the collectives' jobs)
/// and reads back what the control plane needs: the lane count, the pool, every name.
#[test]
fn p4c_compiles_if_available() {
    if common::on_path("p4c").is_none() {
        skip!("skipped: p4c not found (p4c_compiles_if_available)");
        return;
    }
    for lanes in [DEFAULT_LANES, 256] {
        let dir = common::temp_dir("p4c");
        let json = common::compile(&dir, lanes).unwrap_or_else(|e| panic!("{lanes} lanes: {e}"));
        let text = std::fs::read_to_string(&json).unwrap();
        let info = ProgramInfo::from_json(&text).unwrap_or_else(|e| panic!("{lanes} lanes: {e}"));
        assert_eq!(
            info,
            ProgramInfo {
                lanes,
                pool_slots: POOL_SLOTS
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Identifiers in the hand-written program that must be declared somewhere: every `SR_*`
/// constant (generated file or program), every `hdr.agg.*` field (the wire crate's FIELDS),
/// every `meta.*` field (the metadata struct), every `hdr.*` header (the headers struct).
/// p4c is absent on the development machine; this catches the typos it would.
#[test]
fn program_uses_only_declared_names() {
    let main = strip_comments(&std::fs::read_to_string(p4_dir().join(PROGRAM_FILE)).unwrap());
    let generated = generate_headers(DEFAULT_LANES);
    let idents = |src: &str, prefix: &str| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = src;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            let tail = &rest[at + prefix.len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                out.insert(name);
            }
            rest = tail;
        }
        out
    };
    let defined: BTreeSet<String> = generated
        .lines()
        .chain(main.lines())
        .filter_map(|l| l.trim().strip_prefix("#define "))
        .chain(
            main.lines()
                .filter_map(|l| l.trim().strip_prefix("const "))
                .filter_map(|l| l.split_whitespace().nth(1)),
        )
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    for c in idents(&main, "SR_") {
        assert!(
            defined.contains(&format!("SR_{c}")),
            "SR_{c} is not defined"
        );
    }
    let fields: BTreeSet<&str> = sketchreduce_wire::packet::FIELDS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    for f in idents(&main, "hdr.agg.") {
        assert!(
            fields.contains(f.as_str())
                || ["isValid", "setValid", "setInvalid"].contains(&f.as_str()),
            "hdr.agg.{f} is not a wire field"
        );
    }
    let block = |start: &str| -> String {
        let at = main.find(start).unwrap_or_else(|| panic!("{start}"));
        main[at..at + main[at..].find('}').unwrap()].to_string()
    };
    let meta = block("struct sr_meta_t {");
    for m in idents(&main, "meta.") {
        assert!(
            meta.contains(&format!(" {m};")),
            "meta.{m} is not a field of sr_meta_t"
        );
    }
    let headers = block("struct headers_t {");
    for h in idents(&main, "hdr.") {
        assert!(
            headers.contains(&format!(" {h};")),
            "hdr.{h} is not a header of headers_t"
        );
    }
    // Every header type field the program reads exists in its header type.
    for (hdr, ty) in [
        ("ethernet", "ethernet_t"),
        ("ipv4", "ipv4_t"),
        ("udp", "udp_t"),
    ] {
        let decl = block(&format!("header {ty} {{"));
        for f in idents(&main, &format!("hdr.{hdr}.")) {
            assert!(
                decl.contains(&format!(" {f};")) || f == "isValid",
                "hdr.{hdr}.{f} is not a field of {ty}"
            );
        }
    }
}

/// The harness turns off checksum and segmentation offloads on the veths bmv2 uses (ethtool
/// ioctls, no ethtool binary): checked here on a veth pair, where no bmv2 is needed.
#[test]
fn veth_offloads_can_be_turned_off() {
    if !common::can_create_netns() {
        skip!("skipped: cannot create network namespaces (veth_offloads_can_be_turned_off)");
        return;
    }
    let ns = format!("srp4-offl-{}", std::process::id());
    let _ = common::sh(&["ip", "netns", "del", &ns]);
    common::sh(&["ip", "netns", "add", &ns]).unwrap();
    let r = (|| -> Result<(), String> {
        common::sh(&[
            "ip", "-n", &ns, "link", "add", "offa", "type", "veth", "peer", "name", "offb",
        ])?;
        common::offloads_off(&ns, "offa")?;
        common::offloads_off(&ns, "offb")?;
        // A missing interface is an error, not a silent success.
        match common::offloads_off(&ns, "nosuchif") {
            Err(_) => Ok(()),
            Ok(()) => Err("offloads_off on a missing interface succeeded".into()),
        }
    })();
    let _ = common::sh(&["ip", "netns", "del", &ns]);
    r.unwrap();
}
