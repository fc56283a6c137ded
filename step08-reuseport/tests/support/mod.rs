//! What the tests of `--loop io-uring` share: whether io_uring can run here at all.

/// `false`, with the reason on stderr, when this machine cannot run io_uring; the tests then
/// pass without running, as there is nothing to test. Under CI (`CI` set) the machine is
/// known to have io_uring, so its absence fails the test instead of hiding it.
pub fn io_uring_available() -> bool {
    match step08_reuseport::io_uring_refused() {
        None => true,
        Some(unavailable) if std::env::var_os("CI").is_some() => {
            panic!("CI runs these tests on a kernel with io_uring, but {unavailable}")
        }
        Some(unavailable) => {
            eprintln!("skipped: {unavailable}");
            false
        }
    }
}
