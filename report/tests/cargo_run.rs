//! `cargo run --release -p report`, the first command in the top README, must start the
//! report itself: should this package build a second binary again (it once built
//! `burst-syscalls`), `cargo run` without a default would refuse to choose.

use std::path::Path;
use std::process::Command;

/// `cargo run -p report` with no `--bin` runs the report (its `--help` says what it does).
#[test]
fn cargo_run_without_bin_starts_the_report() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("report/ lives in the workspace");
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--offline", "-p", "report"])
        .args(["--", "--help"])
        .current_dir(workspace)
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`cargo run -p report -- --help` failed; the README's commands need it to pick the \
         report binary:\n{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Run every step"),
        "`cargo run -p report` started something other than the report:\n{stdout}"
    );
}
