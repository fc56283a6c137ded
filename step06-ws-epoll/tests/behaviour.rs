//! The behaviour every WebSocket step promises, checked against this step's binary under
//! both buffer strategies.

use stepcheck::ws;

const BIN: &str = env!("CARGO_BIN_EXE_step06-ws-epoll");

/// The same checks, once per `--buffers` strategy.
macro_rules! for_both_strategies {
    ($($(#[$doc:meta])* $name:ident => |$extra:ident| $check:expr;)*) => {
        mod shared {
            use super::*;
            $($(#[$doc])* #[test] fn $name() { let $extra: &[&str] = &["--buffers", "shared"]; $check; })*
        }
        mod per_conn {
            use super::*;
            $($(#[$doc])* #[test] fn $name() { let $extra: &[&str] = &["--buffers", "per-conn"]; $check; })*
        }
    };
}

for_both_strategies! {
    /// Text and binary messages come back unchanged, at every frame length encoding.
    echoes_a_round_trip => |extra| ws::echo_round_trip(BIN, extra);
    /// 200 clients connected at once are all echoed.
    echoes_200_concurrent_clients => |extra| ws::concurrent_clients_all_echoed(BIN, extra, 200);
    /// A 1 MiB message comes back intact, through partial writes.
    echoes_1_mib_intact_through_partial_writes => |extra| ws::large_message_echoed_intact(BIN, extra, 1 << 20);
    /// A client that sends without reading neither stalls the others nor grows the server.
    a_client_that_never_reads_stalls_nobody => |extra| ws::non_reading_client_does_not_stall_others(BIN, extra);
    /// Clients that vanish with a reset leave the server up and serving.
    resets_leave_the_server_serving => |extra| ws::resets_leave_the_server_serving(BIN, extra, 50);
    /// The memory line reports how many WebSocket connections are open.
    memory_line_counts_connections => |extra| ws::memory_line_counts_connections(BIN, extra, 50);
    /// At the fd limit the server neither dies nor spins, and serves again after.
    survives_running_out_of_fds => |extra| ws::survives_running_out_of_fds(BIN, extra);
    /// A message sent in fragments comes back whole, as one message.
    fragmented_message_echoed_whole => |extra| ws::fragmented_message_echoed_whole(BIN, extra);
    /// A ping is answered with a pong carrying the same payload.
    ping_answered_with_pong => |extra| ws::ping_answered_with_pong(BIN, extra);
    /// A client's close is answered with a close, then the server hangs up.
    close_handshake_answered => |extra| ws::close_handshake_answered(BIN, extra);
    /// A message over the 1 MiB limit closes that connection only, and is never echoed.
    oversized_message_closes_only_that_connection => |extra| ws::oversized_message_closes_only_that_connection(BIN, extra, (1 << 20) + 1);
    /// A request that is not a WebSocket upgrade is refused, and the server keeps serving.
    bad_handshake_refused => |extra| ws::bad_handshake_refused(BIN, extra);
}

/// stdout closed (`step06-ws-epoll | head -1`): the memory line is lost, the server serves on.
#[test]
fn survives_stdout_closed() {
    ws::survives_stdout_closed(BIN, &[]);
}
