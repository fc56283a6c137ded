//! Headless Chromium for the checks that need a real browser: step06's page in a tab, the
//! slides on a 1280×720 screen.
//!
//! Where Chromium is absent a check says so and passes, unless `WORKSHOP_REQUIRE_CHROMIUM=1`
//! (which CI sets): then it fails, so a CI machine without a browser cannot pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable that turns a skip into a failure.
pub const REQUIRE: &str = "WORKSHOP_REQUIRE_CHROMIUM";

/// Chromium on this machine: `$CHROME_PATH` if it names a file (marp-cli reads it too),
/// else `chromium` or `chromium-browser` on `PATH`.
pub fn find() -> Option<PathBuf> {
    let chosen = std::env::var_os("CHROME_PATH")
        .map(PathBuf::from)
        .filter(|path| path.is_file());
    chosen.or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
            .find(|candidate| candidate.is_file())
    })
}

/// Chromium, or `None` after saying that `check` is skipped; panics instead when
/// [`REQUIRE`] is `1`.
pub fn find_or_skip(check: &str) -> Option<PathBuf> {
    let found = find();
    if found.is_none() {
        skip(check, "chromium (apt-get install chromium)");
    }
    found
}

/// Say that `check` is skipped for want of `missing`, or fail when [`REQUIRE`] is `1`.
pub fn skip(check: &str, missing: &str) {
    if std::env::var(REQUIRE).as_deref() == Ok("1") {
        panic!("{check} needs {missing}, and {REQUIRE}=1");
    }
    eprintln!("skipped: {check} needs {missing}");
}

/// `chromium --headless …` with its profile in `profile` (a fresh directory the caller
/// removes): no sandbox (tests may run as root), no GPU, and none of the browser's own
/// network traffic, so only the page under test talks. The caller adds what to do.
pub fn headless(chromium: &Path, profile: &Path) -> Command {
    let mut command = Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}
