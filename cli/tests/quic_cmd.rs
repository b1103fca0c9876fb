//! The QUIC identity command and the switch's `--quic-client-fingerprints` startup checks,
//! through the real binary.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sketchreduce");

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sr-cli-quic-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fingerprint(dir: &std::path::Path) -> String {
    let out = Command::new(BIN)
        .args(["quic", "fingerprint", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn fingerprint_creates_the_identity_once() {
    let d = tmp("fp");
    let id = d.join("worker");
    let a = fingerprint(&id);
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
    // Same identity the second time, and the fingerprint is that of the stored certificate.
    assert_eq!(fingerprint(&id), a);
    let cert = std::fs::read(id.join(sketchreduce_quic::CERT_FILE)).unwrap();
    assert_eq!(sketchreduce_quic::fingerprint(&cert), a);
    // Another directory, another identity.
    assert_ne!(fingerprint(&d.join("other")), a);
    let _ = std::fs::remove_dir_all(d);
}

/// Starts a switch on free ports with the given allow-list text; returns its stderr (it must
/// fail before serving).
fn switch_refuses(d: &std::path::Path, allow_list: &str) -> String {
    let file = d.join("clients");
    std::fs::write(&file, allow_list).unwrap();
    let out = Command::new(BIN)
        .args(["switch", "--listen", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
        .arg("--cert-dir")
        .arg(d.join("switch"))
        .arg("--quic-client-fingerprints")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn switch_refuses_an_empty_or_malformed_allow_list() {
    let d = tmp("bad");
    let err = switch_refuses(&d, "# nobody yet\n\n");
    assert!(err.contains("no fingerprint"), "{err}");
    let good = "ab".repeat(32);
    let err = switch_refuses(&d, &format!("{good}\n# c\n{}\n", &good[..60]));
    assert!(
        err.contains("line 3") && err.contains("60 hex digits"),
        "{err}"
    );
    let err = switch_refuses(&d, &format!("{}xy\n", &good[..62]));
    assert!(err.contains("line 1") && err.contains("'x'"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn allow_list_needs_quic() {
    let out = Command::new(BIN)
        .args(["switch", "--quic-client-fingerprints", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("required arguments"), "{err}");
}
