//! The examples learn: train_ncf's held-out AUC rises well above chance and train_mlp's
//! held-out MSE falls well below predicting zero; both write the CSV and the PNG curve.

use std::path::Path;

/// Runs an example with `args` and returns (stdout, the row of `algo` in the table).
fn run(exe: &str, out_dir: &Path, args: &[&str]) -> (String, Vec<String>) {
    let out = std::process::Command::new(exe)
        .args(args)
        .arg("--out-dir")
        .arg(out_dir)
        .arg("--quiet")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("ring "))
        .unwrap_or_else(|| panic!("no ring row: {stdout}"))
        .split_whitespace()
        .map(String::from)
        .collect();
    (stdout, row)
}

/// Columns (loopback): algo, iter ms, vs ring, compute ms, comm ms, KB, loss[0], loss[end],
/// metric[0], metric[end].
fn metric_ends(row: &[String]) -> (f64, f64) {
    (row[8].parse().unwrap(), row[9].parse().unwrap())
}

fn check_curves(dir: &Path, name: &str, iters: usize) {
    let csv = std::fs::read_to_string(dir.join(format!("{name}_ring.csv"))).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("iteration,loss,held_out_"), "{csv}");
    assert_eq!(
        lines.len(),
        iters + 2,
        "header, the metric before training, one row per iteration"
    );
    let png = std::fs::read(dir.join(format!("{name}_ring.png"))).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn train_ncf_held_out_auc_improves() {
    let dir = std::env::temp_dir().join(format!("ncf-learning-{}", std::process::id()));
    let (stdout, row) = run(
        env!("CARGO_BIN_EXE_train_ncf"),
        &dir,
        &[
            "--workers",
            "2",
            "--algo",
            "ring",
            "--iters",
            "30",
            "--users",
            "3000",
            "--items",
            "800",
            "--batch",
            "256",
            "--eval-every",
            "10",
        ],
    );
    let (a0, a1) = metric_ends(&row);
    assert!((0.4..0.6).contains(&a0), "chance before training: {stdout}");
    assert!(a1 > 0.75, "held-out AUC after 30 iterations: {stdout}");
    check_curves(&dir, "train_ncf", 30);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn train_mlp_learns_below_predicting_zero() {
    let dir = std::env::temp_dir().join(format!("mlp-learning-{}", std::process::id()));
    let (stdout, row) = run(
        env!("CARGO_BIN_EXE_train_mlp"),
        &dir,
        &[
            "--workers",
            "2",
            "--algo",
            "ring",
            "--iters",
            "40",
            "--hidden",
            "64",
        ],
    );
    let (_, m1) = metric_ends(&row);
    // Predicting 0 scores (1 − e⁻²)/2 ≈ 0.432 on this target.
    assert!(m1 < 0.2, "held-out MSE after 40 iterations: {stdout}");
    check_curves(&dir, "train_mlp", 40);
    std::fs::remove_dir_all(dir).ok();
}
