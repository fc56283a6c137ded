//! Lines on stdout and stderr that never make a server wait.
//!
//! `println!` blocks until its reader takes the line. When stdout is a pipe nobody reads (a
//! paused `less`, a log collector that fell behind) or a terminal held with Ctrl-S, the
//! pipe fills and the next memory line waits in `write`: in an event loop, that is every
//! client waiting. And `println!` panics on a write error (`> /dev/full`). So here every
//! line goes out without blocking, whole or not at all; a line the reader has no room for
//! now is dropped and counted, and the next line that goes out says how many were dropped.
//! No output error is fatal.
//!
//! Not blocking is a flag, `O_NONBLOCK`, and it belongs to the open file description,
//! which a process shares with whoever gave it its stdout: the shell's terminal (left
//! non-blocking, it breaks the shell once the step exits), a pipe another process writes
//! too. So the flag is never set on those. By what the descriptor is:
//! - a pipe or a terminal (any device) is opened again through `/proc/self/fd/N`, with
//!   `O_NONBLOCK`: the same pipe or terminal, in a description of our own;
//! - a socket is written with `send(MSG_DONTWAIT)`: non-blocking for that call only;
//! - a regular file is written as it is: a disk never waits for a reader.
//!
//! A write of up to `PIPE_BUF` (4 096) bytes to a pipe is all or nothing; a terminal or a
//! socket may take part of a line. Then the rest is kept, and goes out before any other
//! line, so that lines never mix; until it is out, new lines are dropped.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, PoisonError};

use crate::sys::interrupted;

/// Print a line on stdout without blocking. `line` is given the number of lines dropped
/// since the last one that went out, for the line to say so. Returns whether the line went
/// out (if it was dropped, the caller may try again later).
pub fn print(line: impl FnOnce(u64) -> String) -> bool {
    with_streams(|[stdout, _]| stdout.line(line))
}

/// Print a line on stderr without blocking (what [`log!`](crate::log) calls). If earlier
/// lines were dropped, this one ends with how many.
pub fn log(args: fmt::Arguments) {
    with_streams(|[_, stderr]| {
        stderr.line(|dropped| match dropped {
            0 => args.to_string(),
            n => format!("{args} ({n} earlier lines dropped)"),
        })
    });
}

/// Lose every line from now on. For a step's `serve` run on a thread of a test's own
/// process (stepcheck's `inprocess`): its lines would land among the test harness's, which
/// captures only what goes through `print!` and `eprint!`.
pub fn discard() {
    with_streams(|streams| {
        for stream in streams {
            stream.sink = Sink::Nowhere;
        }
    });
}

/// `eprintln!` that never blocks and never panics: a line on stderr, dropped (and counted)
/// if the reader has no room for it now. See [`output`](crate::output).
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::output::log(format_args!($($arg)*))
    };
}

/// stdout and stderr, opened together at the first line either gets, which every step
/// prints at start (`listening on`): later, at its fd limit, a step could not open them.
static STREAMS: Mutex<Option<[Output; 2]>> = Mutex::new(None);

fn with_streams<R>(f: impl FnOnce(&mut [Output; 2]) -> R) -> R {
    // A thread that panicked while holding the lock left the streams as they were.
    let mut streams = STREAMS.lock().unwrap_or_else(PoisonError::into_inner);
    f(streams.get_or_insert_with(|| [Output::open(1), Output::open(2)]))
}

/// One output stream, and what is left over from its last line.
struct Output {
    /// The descriptor lines are for: 1 or 2.
    fd: RawFd,
    /// How a line is written to it without blocking.
    sink: Sink,
    /// The end of a line the reader took only part of: it goes out before anything else.
    rest: Vec<u8>,
    /// Lines dropped since the last one that went out.
    dropped: u64,
}

/// How lines reach what `fd` is, without blocking.
enum Sink {
    /// A pipe or a terminal, opened again with `O_NONBLOCK`: our own description of it.
    Reopened(File),
    /// A socket: `send` with `MSG_DONTWAIT`.
    Socket,
    /// A regular file: `write` to it as it is.
    AsIs,
    /// Nothing there (the descriptor was closed), or it could not be opened again.
    Nowhere,
}

impl Output {
    fn open(fd: RawFd) -> Output {
        Output {
            fd,
            sink: Sink::new(fd),
            rest: Vec::new(),
            dropped: 0,
        }
    }

    /// Write one line (a newline is added) if the reader has room for it now, else count it.
    fn line(&mut self, line: impl FnOnce(u64) -> String) -> bool {
        if !self.rest.is_empty() {
            if let Ok(n) = self.write(&self.rest) {
                self.rest.drain(..n);
            }
            if !self.rest.is_empty() {
                self.dropped += 1;
                return false;
            }
        }
        let mut text = line(self.dropped);
        text.push('\n');
        match self.write(text.as_bytes()) {
            Ok(n @ 1..) => {
                self.rest.extend_from_slice(&text.as_bytes()[n..]);
                self.dropped = 0;
                true
            }
            // EAGAIN: no room now. Anything else (EPIPE, ENOSPC, EIO): lost.
            Ok(0) | Err(_) => {
                self.dropped += 1;
                false
            }
        }
    }

    /// One non-blocking write: how many bytes the reader took.
    fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        loop {
            let written = match &self.sink {
                Sink::Reopened(file) => (&*file).write(bytes),
                Sink::Socket => {
                    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                    // SAFETY: `bytes` is valid for reads of its length; the fd is only a
                    // number to the kernel (were it closed, EBADF).
                    ssize(unsafe { libc::send(self.fd, bytes.as_ptr().cast(), bytes.len(), flags) })
                }
                Sink::AsIs => {
                    // SAFETY: as for `send` above.
                    ssize(unsafe { libc::write(self.fd, bytes.as_ptr().cast(), bytes.len()) })
                }
                Sink::Nowhere => Err(io::ErrorKind::NotConnected.into()),
            };
            match written {
                Err(err) if interrupted(&err) => continue,
                written => return written,
            }
        }
    }
}

impl Sink {
    /// Find out what `fd` is, and how to write to it without blocking.
    fn new(fd: RawFd) -> Sink {
        // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is valid for writes; a closed fd gives EBADF.
        if unsafe { libc::fstat(fd, &mut stat) } == -1 {
            return Sink::Nowhere;
        }
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFREG => Sink::AsIs,
            libc::S_IFSOCK => Sink::Socket,
            // A pipe, a terminal, /dev/null: a new description of the same object. The
            // terminal must not become our controlling terminal (O_NOCTTY).
            _ => OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(format!("/proc/self/fd/{fd}"))
                .map_or(Sink::Nowhere, Sink::Reopened),
        }
    }
}

/// `write`'s and `send`'s return value (-1 and errno on failure) as an `io::Result`.
fn ssize(ret: isize) -> io::Result<usize> {
    match ret {
        -1 => Err(io::Error::last_os_error()),
        n => Ok(n as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A pipe, both ends blocking, as a shell makes one.
    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is valid for writing two ints.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just created and are owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    fn is_nonblocking(fd: RawFd) -> bool {
        // SAFETY: F_GETFL takes no pointer.
        unsafe { libc::fcntl(fd, libc::F_GETFL) & libc::O_NONBLOCK != 0 }
    }

    /// Everything the reader can take now, without waiting, as text.
    fn drain(reader: &mut File) -> String {
        // SAFETY: F_SETFL takes no pointer; the read end is this test's own description.
        unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(all).unwrap()
    }

    /// `line N` followed by the drop count it was given, if any.
    fn numbered(n: usize) -> impl FnOnce(u64) -> String {
        move |dropped| match dropped {
            0 => format!("line {n:03}{}", "·".repeat(40)),
            d => format!("line {n:03}{} dropped {d}", "·".repeat(40)),
        }
    }

    /// What the reader must see: each line that went out, with the count of the lines
    /// offered since the previous one that went out.
    #[derive(Default)]
    struct Expected {
        lines: Vec<String>,
        /// The first line offered since the last one that went out.
        since: usize,
    }

    impl Expected {
        /// Offer line `n` to `out`; true if it went out.
        fn offer(&mut self, out: &mut Output, n: usize) -> bool {
            let went_out = out.line(numbered(n));
            if went_out {
                self.lines.push(numbered(n)((n - self.since) as u64));
                self.since = n + 1;
            }
            went_out
        }
    }

    /// A pipe nobody reads: lines go in whole until it is full, then they are dropped
    /// without waiting, and once the reader catches up the next line says how many were
    /// dropped. The writer's own descriptor (the one a shell would share) stays blocking.
    #[test]
    fn a_full_pipe_drops_whole_lines_and_counts_them() {
        let (mut reader, writer) = pipe();
        let mut out = Output::open(writer.as_raw_fd());
        assert!(matches!(out.sink, Sink::Reopened(_)));
        // Far more than a pipe holds (64 KiB): this would block forever if writes waited.
        let went_out = (0..2000).filter(|&n| out.line(numbered(n))).count();
        assert!(went_out < 2000, "a full pipe took every line");
        assert!(
            !is_nonblocking(writer.as_raw_fd()),
            "the shared description was changed"
        );

        let text = drain(&mut reader);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), went_out);
        for (n, line) in lines.iter().enumerate() {
            assert_eq!(*line, numbered(n)(0), "line {n} is not whole");
        }
        assert!(out.line(numbered(2000)));
        let dropped = 2000 - went_out;
        assert_eq!(
            drain(&mut reader),
            format!("{}\n", numbered(2000)(dropped as u64))
        );
        // Said once: the count starts again.
        assert!(out.line(numbered(2001)));
        assert_eq!(drain(&mut reader), format!("{}\n", numbered(2001)(0)));
    }

    /// A terminal may take part of a line: the rest goes out before anything else, so what
    /// the terminal shows is whole lines, in order, and the dropped ones are counted.
    #[test]
    fn a_full_terminal_gets_whole_lines() {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: both out-pointers are valid; the name, termios and winsize may be null.
        let ret = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(ret, 0, "openpty: {}", io::Error::last_os_error());
        // SAFETY: openpty just created both fds; nobody else owns them.
        let (mut master, slave) =
            unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut out = Output::open(slave.as_raw_fd());
        assert!(matches!(out.sink, Sink::Reopened(_)));
        // The terminal may make room by itself as it moves bytes along: a later line may
        // go out, saying how many were dropped before it.
        let mut expected = Expected::default();
        let went_out = (0..2000).filter(|&n| expected.offer(&mut out, n)).count();
        assert!(went_out < 2000, "a full terminal took every line");
        assert!(
            !is_nonblocking(slave.as_raw_fd()),
            "the shell's terminal was made non-blocking"
        );

        // Read until the next line, with its count, is out: the rest of a half-written line
        // goes first, and may need several rounds of reading.
        let mut shown = String::new();
        for n in 2000..2100 {
            shown += &drain(&mut master);
            if expected.offer(&mut out, n) {
                break;
            }
        }
        shown += &drain(&mut master);
        // The terminal turns each \n into \r\n.
        let lines: Vec<&str> = shown.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines, expected.lines, "lines lost, mixed or miscounted");
        assert!(expected.lines.last().unwrap().contains("dropped"));
    }

    /// A regular file is written where its description stands (here, appended), and a
    /// descriptor that is not open at all loses the lines without failing.
    #[test]
    fn files_are_written_as_they_are_and_nothing_is_fatal() {
        let path = std::env::temp_dir().join(format!("output-test-{}", std::process::id()));
        std::fs::write(&path, "already there\n").unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let mut out = Output::open(file.as_raw_fd());
        assert!(matches!(out.sink, Sink::AsIs));
        assert!(out.line(|_| "appended".into()));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "already there\nappended\n"
        );
        std::fs::remove_file(&path).unwrap();

        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut out = Output::open(full.as_raw_fd());
        assert!(!out.line(|_| "no space".into()));
        assert_eq!(out.dropped, 1);

        let mut out = Output::open(1_000_000);
        assert!(matches!(out.sink, Sink::Nowhere));
        assert!(!out.line(|_| "nowhere".into()));
    }

    /// A socket is written with MSG_DONTWAIT: once its buffers are full, lines are dropped.
    #[test]
    fn a_full_socket_drops_lines() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut out = Output::open(ours.as_raw_fd());
        assert!(matches!(out.sink, Sink::Socket));
        let went_out = (0..100_000).filter(|&n| out.line(numbered(n))).count();
        assert!(went_out < 100_000, "a full socket took every line");
        assert!(!is_nonblocking(ours.as_raw_fd()));
        drop(theirs);
    }
}
