//! `cargo test -p step07-tokio --test task_size -- --nocapture`
//!
//! Exercise 1 of the README, ready to fill in: how many bytes does one connection's task
//! hold for its whole life? Everything the measurement needs is here (a runtime, a
//! listener, a connected stream, the options as `serve` gets them); what is left to you
//! is marked `EXERCISE`.

use clap::Parser;
use step07_tokio::{Args, task_size};

/// The size of `handle_connection`'s future with the options given on a command line
/// (`&[]`: the defaults).
fn measure(options: &[&str]) -> usize {
    let args = Args::parse_from(std::iter::once("step07-tokio").chain(options.iter().copied()));
    // A tokio stream must belong to a runtime: one thread is enough, nothing runs on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind on loopback");
        // The kernel completes the handshake from its backlog: no accept needed.
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .expect("connect on loopback");
        task_size(stream, &args)
    })
}

/// The task holds the connection's state, not its read buffer: about a KiB, with the
/// default 128 KiB buffer or a 4 KiB one alike (the buffer is a heap allocation of its own).
#[test]
fn a_task_is_about_a_kib_whatever_the_read_buffer() {
    let default = measure(&[]);
    let small = measure(&["--read-buffer", "4096"]);
    eprintln!("handle_connection's future: {default} bytes (--read-buffer 4096: {small})");
    assert_eq!(
        default, small,
        "the read buffer is on the heap: its size must not change the task's"
    );
    assert!(
        (512..4096).contains(&default),
        "a task of {default} bytes: the README says about 1.3 KiB"
    );
}

/// EXERCISE 1: run `cargo test -p step07-tokio --test task_size -- --nocapture`, read the
/// size the test above prints, and write it here in place of `None`. Then follow the
/// README: swap in tungstenite's handshake, run again, and see which test tells you.
const MY_ANSWER: Option<usize> = None;

/// Your answer against the measurement.
#[test]
#[ignore = "exercise 1: write the size you read in MY_ANSWER, then run with --include-ignored"]
fn the_task_is_the_size_you_wrote() {
    let answer = MY_ANSWER.expect("exercise 1: write the size you read in MY_ANSWER");
    assert_eq!(
        measure(&[]),
        answer,
        "the task is not the size you wrote: which state of handle_connection grew it?"
    );
}
