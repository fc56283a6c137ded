//! What step08's tests share: whether io_uring can run here at all, and a signal to a
//! worker or the supervisor.

#![allow(dead_code)] // each test file uses its own part of this

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

/// Send `signal` to `pid`, a process this test started or one of its workers.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill takes no pointers. The pid is a process this test started or its
    // child, which its parent has not reaped, so it has not been reused.
    let ret = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        ret,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}
