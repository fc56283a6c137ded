//! The behaviour every WebSocket step promises, checked against this step's binary under
//! both buffer strategies.

use stepcheck::ws;

const BIN: &str = env!("CARGO_BIN_EXE_step06-ws-epoll");

/// The same checks, once per `--buffers` strategy.
macro_rules! for_both_strategies {
    ($($name:ident => |$extra:ident| $check:expr;)*) => {
        mod shared {
            use super::*;
            $(#[test] fn $name() { let $extra: &[&str] = &["--buffers", "shared"]; $check; })*
        }
        mod per_conn {
            use super::*;
            $(#[test] fn $name() { let $extra: &[&str] = &["--buffers", "per-conn"]; $check; })*
        }
    };
}

for_both_strategies! {
    echoes_a_round_trip => |extra| ws::echo_round_trip(BIN, extra);
    echoes_200_concurrent_clients => |extra| ws::concurrent_clients_all_echoed(BIN, extra, 200);
    echoes_1_mib_intact_through_partial_writes => |extra| ws::large_message_echoed_intact(BIN, extra, 1 << 20);
    a_client_that_never_reads_stalls_nobody => |extra| ws::non_reading_client_does_not_stall_others(BIN, extra);
    resets_leave_the_server_serving => |extra| ws::resets_leave_the_server_serving(BIN, extra, 50);
    memory_line_counts_connections => |extra| ws::memory_line_counts_connections(BIN, extra, 50);
    survives_running_out_of_fds => |extra| ws::survives_running_out_of_fds(BIN, extra);
    fragmented_message_echoed_whole => |extra| ws::fragmented_message_echoed_whole(BIN, extra);
    ping_answered_with_pong => |extra| ws::ping_answered_with_pong(BIN, extra);
    close_handshake_answered => |extra| ws::close_handshake_answered(BIN, extra);
    oversized_message_closes_only_that_connection => |extra| ws::oversized_message_closes_only_that_connection(BIN, extra, (1 << 20) + 1);
    bad_handshake_refused => |extra| ws::bad_handshake_refused(BIN, extra);
}
