//! Checks for the raw-TCP echo steps (01–05). Each takes the step's binary path.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::ops::RangeBounds;
use std::thread;
use std::time::{Duration, Instant};

use crate::{
    FLOOD_BYTES, PATIENCE, Server, assert_echo, assert_flood_held_back, check_fd_exhaustion, flood,
    memory,
};

/// One client, one message, the same bytes back.
pub fn echo_round_trip(bin: &str) {
    let server = Server::start(bin, &[]);
    let mut client = server.connect();
    assert_echo(&mut client, b"hello, epoll\n");
    assert_echo(&mut client, b"\x00\xffbinary is fine too");
}

/// `clients` connections open at once, every one of them echoed.
pub fn concurrent_clients_all_echoed(bin: &str, clients: usize) {
    let server = Server::start(bin, &[]);
    let mut streams: Vec<TcpStream> = (0..clients).map(|_| server.connect()).collect();
    // Every client speaks before any reads, so a server that serves one at a time stalls here.
    for (i, stream) in streams.iter_mut().enumerate() {
        stream
            .write_all(format!("client {i}\n").as_bytes())
            .unwrap();
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let expected = format!("client {i}\n");
        let mut echoed = vec![0; expected.len()];
        stream
            .read_exact(&mut echoed)
            .unwrap_or_else(|err| panic!("client {i} of {clients} got no echo: {err}"));
        assert_eq!(
            echoed,
            expected.as_bytes(),
            "client {i} got another client's bytes"
        );
    }
}

/// A message far larger than any socket buffer comes back intact: the server must keep
/// what the kernel would not take yet and send it when the socket is writable again.
pub fn large_message_echoed_intact(bin: &str, len: usize) {
    let server = Server::start(bin, &[]);
    let client = server.connect();
    let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();

    // Write from one thread while this one reads, as a real client must: written alone,
    // the message would fill both directions' buffers and deadlock client and server.
    let mut writer = client.try_clone().unwrap();
    let to_send = message.clone();
    let sending = thread::spawn(move || writer.write_all(&to_send));

    let mut echoed = vec![0; len];
    let mut reader = client;
    reader
        .read_exact(&mut echoed)
        .unwrap_or_else(|err| panic!("the {len}-byte echo stopped early: {err}"));
    sending.join().unwrap().expect("sending the large message");
    let first_difference = echoed.iter().zip(&message).position(|(a, b)| a != b);
    assert_eq!(
        first_difference, None,
        "the echo of {len} bytes differs at that offset"
    );
}

/// A client that sends and never reads fills its socket buffers; the server must stop
/// reading it (it grows by less than [`crate::FLOOD_GROWTH_LIMIT`]) and keep serving everybody
/// else. Breaks if the server keeps reading a client whose echo it cannot send, even into
/// a buffer of a few MiB.
pub fn non_reading_client_does_not_stall_others(bin: &str) {
    let server = Server::start(bin, &[]);
    // A first client, echoed once, so that what the server allocates once (its read buffer,
    // step07's runtime) is in the baseline and not counted as the flood's.
    let mut first = server.connect();
    assert_echo(&mut first, b"a first echo\n");
    let base_rss = server.rss_bytes();

    let flooder = server.connect();
    let mut flooding = flooder.try_clone().unwrap();
    // Bounded: at most 256 MiB, for at most 3 s; it stops much sooner once buffers fill.
    let flood = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        flood(&mut flooding, &chunk, FLOOD_BYTES, Duration::from_secs(3))
    });

    thread::sleep(Duration::from_millis(500));
    let mut other = server.connect();
    assert_echo(&mut other, b"still served while another client floods\n");
    let sent = flood.join().unwrap();

    assert_flood_held_back(&server, base_rss, sent);
    drop(flooder);
}

/// Clients that vanish with a reset (SO_LINGER 0), some with data in flight, leave the
/// server up and serving.
pub fn resets_leave_the_server_serving(bin: &str, clients: usize) {
    let mut server = Server::start(bin, &[]);
    for i in 0..clients {
        let mut client = server.connect();
        if i % 2 == 0 {
            // Half of them leave a request behind whose echo will meet a dead socket.
            client.write_all(&vec![b'r'; 100_000]).unwrap();
        }
        reset(client);
    }
    thread::sleep(Duration::from_millis(200));
    assert!(
        server.is_running(),
        "the server died after resets:\n{}",
        server.stderr()
    );
    let mut client = server.connect();
    assert_echo(&mut client, b"after the resets\n");
}

/// Close with SO_LINGER 0: the kernel sends RST instead of FIN.
pub fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is open (owned by `stream`) and `linger` is a valid option value of
    // the size we pass.
    let ret = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        ret,
        0,
        "setsockopt(SO_LINGER): {}",
        std::io::Error::last_os_error()
    );
    drop(stream);
}

/// The memory line reports the number of open connections as it changes, with the resident
/// set `/proc` gives. Breaks if the count or the figures drift from what the process holds.
pub fn memory_line_counts_connections(bin: &str, clients: usize) {
    let server = Server::start(bin, &[]);
    let mut streams: Vec<TcpStream> = (0..clients).map(|_| server.connect()).collect();
    // An echo on each proves the server has accepted every one of them.
    for stream in &mut streams {
        assert_echo(stream, b"counted?");
    }
    server.assert_memory_line_counts(clients as u64);

    drop(streams);
    server.wait_for_memory_line(0);
}

/// `conns` idle connections (each echoed once) cost what the memory line says, held to
/// `/proc`, and what each connection added to the resident set lies in `band` (bytes).
pub fn idle_connection_cost_within(bin: &str, conns: usize, band: impl RangeBounds<u64>) {
    let server = Server::start(bin, &[]);
    memory::assert_per_conn_within(&server, conns, band, |server| {
        let mut stream = server.connect();
        assert_echo(&mut stream, b"idle from now on");
        stream
    });
}

/// Run out of file descriptors: the server must neither die nor spin at 100% CPU while
/// the listen queue holds connections it cannot accept, and must serve again once
/// descriptors free up.
pub fn survives_running_out_of_fds(bin: &str) {
    check_fd_exhaustion(bin, &[], |server| {
        let mut client = server.connect();
        let mut exchange = || -> std::io::Result<[u8; 12]> {
            client.set_read_timeout(Some(Duration::from_secs(2)))?;
            client.write_all(b"room again?\n")?;
            let mut echoed = [0u8; 12];
            client.read_exact(&mut echoed)?;
            Ok(echoed)
        };
        let echoed = exchange().map_err(|err| err.to_string())?;
        assert_eq!(&echoed, b"room again?\n");
        Ok(())
    });
}

/// A blocking server serves one client at a time: a second client's bytes wait in the
/// kernel until the first client closes.
pub fn second_client_waits_for_the_first(bin: &str) {
    let server = Server::start(bin, &[]);
    let mut first = server.connect();
    assert_echo(&mut first, b"first\n");

    let mut second = server.connect();
    second.write_all(b"second\n").unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut echoed = [0u8; 7];
    match second.read(&mut echoed) {
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the second client was answered while the first was connected: {other:?}"),
    }

    drop(first);
    second.set_read_timeout(Some(PATIENCE)).unwrap();
    second
        .read_exact(&mut echoed)
        .expect("the second client is served once the first closes");
    assert_eq!(&echoed, b"second\n");
}

/// select(2) can watch fds 0..1024 only: clients that would get an fd past that are closed
/// at once, and every other client keeps its echo.
pub fn clients_past_fd_setsize_are_closed(bin: &str, clients: usize) {
    const FD_SETSIZE: usize = 1024;
    let mut server = Server::start(bin, &[]);
    let mut streams: Vec<TcpStream> = (0..clients).map(|_| server.connect()).collect();

    let mut served = Vec::new();
    let mut closed = 0;
    for (i, stream) in streams.iter_mut().enumerate() {
        let message = format!("{i:>5}");
        // A write to a socket the server already closed may fail or succeed (the reset
        // comes back later); the read tells which side of the limit this client is on.
        let _ = stream.write_all(message.as_bytes());
        let mut echoed = [0u8; 5];
        match stream.read_exact(&mut echoed) {
            Ok(()) => {
                assert_eq!(&echoed, message.as_bytes(), "client {i} got the wrong echo");
                served.push(i);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                closed += 1
            }
            Err(err) => panic!("client {i} was neither served nor closed cleanly: {err}"),
        }
    }
    assert!(
        served.len() < FD_SETSIZE && served.len() >= FD_SETSIZE - 16,
        "{} of {clients} clients served; expected all that fit under FD_SETSIZE = {FD_SETSIZE}",
        served.len()
    );
    assert_eq!(served.len() + closed, clients);
    // The log is rate-limited, but the whole burst must be reported within a couple of
    // seconds: the last line's "(N in all)" counts every client closed.
    let expected = format!("({closed} in all)");
    let deadline = Instant::now() + PATIENCE;
    while !server.stderr().contains(&expected) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.stderr().contains(&expected),
        "the log should report all {closed} clients closed past FD_SETSIZE; stderr:\n{}",
        server.stderr()
    );

    // The served ones are still served.
    for &i in served.iter().step_by(50) {
        assert_echo(&mut streams[i], b"again");
    }
    assert!(server.is_running());
}

/// With its stdout closed, the step keeps serving: a memory line that cannot be printed
/// is lost, not fatal.
pub fn survives_stdout_closed(bin: &str) {
    crate::check_stdout_closed(bin, &[], |server| {
        let mut client = server.connect();
        assert_echo(&mut client, b"still serving with stdout closed");
    });
}

/// With its stdout a pipe nobody reads, filled, the step serves every fresh client, and
/// once the pipe is read again its next memory line says how many lines it dropped.
pub fn serves_with_stdout_full(bin: &str) {
    crate::output::check_stdout_full(bin, &[], |server| {
        let mut client = server.connect();
        assert_echo(&mut client, b"served while stdout is full\n");
    });
}

/// With stdout and stderr on /dev/full, the step starts and serves: no output error is
/// fatal.
pub fn serves_with_output_on_dev_full(bin: &str) {
    crate::output::check_output_on_dev_full(bin, &[], |server| {
        let mut client = server.connect();
        assert_echo(&mut client, b"served with output on /dev/full\n");
    });
}
