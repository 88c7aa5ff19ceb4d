//! The README's first command works: the demo example (built by `cargo test` like every
//! example) writes token files, shows refreshes and a live reload, and exits 0.

use std::path::PathBuf;

use crate::harness::{BEARERD, text};

#[test]
fn the_demo_writes_tokens_refreshes_and_reloads() {
    let demo: PathBuf = PathBuf::from(BEARERD)
        .parent()
        .map(|dir| dir.join("examples/demo"))
        .expect("target directory");
    assert!(demo.exists(), "{} is built by cargo test", demo.display());
    let dir = tempfile::tempdir().expect("dir");
    let output = std::process::Command::new(&demo)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("run the demo");
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for file in [
        "tasklist.token",
        "tasklist.env",
        "reports.header",
        "reports.json",
    ] {
        assert!(
            dir.path().join("demo").join(file).exists(),
            "{file}\n{stdout}"
        );
    }
    assert!(
        stdout.matches("tasklist.token changed").count() >= 2,
        "refreshes are shown:\n{stdout}"
    );
    assert!(
        stderr.contains("configuration reloaded"),
        "a live reload:\n{stderr}"
    );
}
