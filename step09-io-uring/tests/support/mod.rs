//! What both test files need: whether io_uring can run here at all.

/// `false`, with the reason on stderr, when this machine cannot run io_uring; the tests then
/// pass without running, as there is nothing to test. Under CI (`CI` set, as `.ci/run`
/// has it) the machine is known to have io_uring, so its absence fails the test instead of
/// hiding it.
///
/// The trial ring is made and dropped on a thread of its own: the kernel's work for a ring
/// it tears down can interrupt its thread's next blocking call (a socket read with a
/// timeout then fails with `EINTR`), and the test's own thread has reads to make.
pub fn available() -> bool {
    let trial = std::thread::spawn(|| step09_io_uring::setup(1, 64).map(drop));
    match trial.join().expect("the trial ring does not panic") {
        Ok(()) => true,
        Err(unavailable) if std::env::var_os("CI").is_some() => {
            panic!("CI runs these tests on a kernel with io_uring, but {unavailable}")
        }
        Err(unavailable) => {
            eprintln!("skipped: {unavailable}");
            false
        }
    }
}
