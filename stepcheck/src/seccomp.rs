//! A kernel that refuses io_uring, for the steps that must say so in one line and exit.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::PATIENCE;

/// Start `bin` with `args` where io_uring is refused (a seccomp filter, as container runtimes
/// install) and check it exits at once with a failure, before listening, having said
/// exactly `line` on stderr and nothing else.
pub fn check_refused_in_one_line(bin: &str, args: &[&str], line: &str) {
    let mut command = Command::new(bin);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and calls only prctl and
    // seccomp, which are async-signal-safe; the filter is built in the child's own memory.
    unsafe {
        command.pre_exec(refuse_io_uring_setup);
    }
    let mut child = command.spawn().expect("start the step");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > PATIENCE {
            child.kill().unwrap();
            panic!("without io_uring the step must exit, not run on");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "it must exit with a failure status"
    );
    assert!(
        !stdout.contains("listening"),
        "it must not listen without io_uring: {stdout}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [line],
        "one line, saying which cause and how to check, and nothing else"
    );
}

/// Install a seccomp filter that makes `io_uring_setup` fail with `EPERM` and allows every
/// other system call: what a container's default profile does. For a child about to exec
/// a step (`CommandExt::pre_exec`), so that the step meets a kernel that refuses io_uring.
fn refuse_io_uring_setup() -> std::io::Result<()> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, sock_filter};
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // The system call's number: offset 0 of `struct seccomp_data`.
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        sock_filter {
            code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        stmt(
            BPF_RET | BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments; no pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `program` points at `filter`, both alive for the call; the kernel copies them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &program as *const libc::sock_fprog,
        )
    };
    if ret == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
