//! The board: what every browser is shown. One history of events, shared by all browsers
//! and bounded; each browser keeps only its place in it (a sequence number).
//!
//! That is what bounds a browser that never reads: it costs its place, its thread and its
//! socket's kernel buffers, never a queue of its own. When it falls further behind than the
//! history reaches, it skips to the oldest event still kept (the latest points win) and the
//! points it skipped are counted, for it and for all.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Events kept: what a browser that connects late is shown, and how far one may fall
/// behind before it loses points. A memory line is ~200 bytes, so ~1 MiB of history; an
/// hour of a step printing once a second, or a whole `report --live`.
pub const HISTORY: usize = 4096;

/// The longest line drawn, in bytes. A memory line is ~200; a longer line is counted bad
/// and skipped (it still goes to stdout), so the history holds at most
/// `HISTORY × MAX_LINE` = 16 MiB, whatever comes in.
pub const MAX_LINE: usize = 4096;

/// At most this many events are handed to one browser at a time: what a browser's thread
/// holds while its write blocks.
pub const BATCH: usize = 256;

/// What every browser is shown, and the counts in the page's status line.
pub struct Board {
    state: Mutex<State>,
    /// Signalled on every change: a new event, or a new status.
    changed: Condvar,
    /// Time zero of the events' `t`.
    started: Instant,
    /// Names this run of the board in event ids, so that a browser reconnecting to another
    /// run (live restarted) starts afresh instead of resuming at a number that means
    /// something else now.
    run: String,
}

struct State {
    /// The history, oldest first: each event already framed for the stream.
    events: VecDeque<Arc<str>>,
    /// The sequence number the next event gets; the oldest kept is `next - events.len()`.
    next: u64,
    counts: Counts,
    /// Bumped whenever `counts` changes in a way the page shows.
    status_version: u64,
}

/// What the status line says. Serialized as the `status` event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// JSON objects posted and drawn.
    pub drawn: u64,
    /// Lines skipped: not a JSON object, not UTF-8, or longer than [`MAX_LINE`].
    pub bad: u64,
    /// Points skipped by browsers that fell behind the history, all browsers together.
    pub dropped: u64,
    /// Lines that could not be passed through to stdout in time (it was not being read).
    pub passthrough_lost: u64,
    /// Whether stdout still takes the lines; `false` once it is closed.
    pub passthrough_open: bool,
    /// Whether input may still come; `false` once stdin has ended.
    pub input_open: bool,
    /// Browsers on the event stream now.
    pub browsers: usize,
}

impl Board {
    pub fn new() -> Arc<Board> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Arc::new(Board {
            state: Mutex::new(State {
                events: VecDeque::with_capacity(HISTORY),
                next: 0,
                counts: Counts {
                    passthrough_open: true,
                    input_open: true,
                    ..Counts::default()
                },
                status_version: 0,
            }),
            changed: Condvar::new(),
            started: Instant::now(),
            run: format!(
                "{:x}{:x}",
                since_epoch.as_nanos() & 0xffff_ffff,
                std::process::id()
            ),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A browser's thread that panicked while holding the lock left the state whole
        // (every change below is a single step), so the board goes on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Post one input line: a JSON object is stamped with the time it came and kept for
    /// every browser; anything else is counted bad and skipped. Returns whether it was kept.
    pub fn post(&self, line: &str) -> bool {
        let is_object = line.len() <= MAX_LINE
            && matches!(serde_json::from_str::<Value>(line), Ok(Value::Object(_)));
        if !is_object {
            self.count_bad();
            return false;
        }
        let t = self.started.elapsed().as_secs_f64();
        let mut state = self.lock();
        let seq = state.next;
        // The line goes out as it came, inside an envelope that adds the time: no parsing
        // and printing again, and unknown fields reach the page untouched.
        let frame = format!(
            "id: {}-{seq}\ndata: {{\"t\":{t:.3},\"line\":{line}}}\n\n",
            self.run
        );
        state.events.push_back(frame.into());
        if state.events.len() > HISTORY {
            state.events.pop_front();
        }
        state.next += 1;
        state.counts.drawn += 1;
        drop(state);
        self.changed.notify_all();
        true
    }

    /// Count a line that cannot be drawn.
    pub fn count_bad(&self) {
        self.update(|counts| counts.bad += 1);
    }

    /// Count lines that did not reach stdout.
    pub fn count_passthrough_lost(&self, lines: u64) {
        self.update(|counts| counts.passthrough_lost += lines);
    }

    /// stdout is closed: lines are drawn, no longer passed through.
    pub fn passthrough_closed(&self) {
        self.update(|counts| counts.passthrough_open = false);
    }

    /// stdin has ended: the picture stays as it is.
    pub fn input_ended(&self) {
        self.update(|counts| counts.input_open = false);
    }

    fn update(&self, change: impl FnOnce(&mut Counts)) {
        let mut state = self.lock();
        change(&mut state.counts);
        state.status_version += 1;
        drop(state);
        self.changed.notify_all();
    }

    /// The counts now.
    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// A new browser on the event stream. `last_event_id` is the `Last-Event-ID` header a
    /// reconnecting browser sends: it resumes after that event if this run still holds
    /// what followed it; otherwise (a first visit, or another run) it starts from the
    /// oldest event kept, after a `reset`.
    pub fn subscribe(self: &Arc<Board>, last_event_id: Option<&str>) -> Subscription {
        let mut state = self.lock();
        let oldest = state.next - state.events.len() as u64;
        let resume = last_event_id
            .and_then(|id| {
                id.strip_prefix(&self.run)?
                    .strip_prefix('-')?
                    .parse::<u64>()
                    .ok()
            })
            .filter(|&seq| seq < state.next);
        state.counts.browsers += 1;
        state.status_version += 1;
        drop(state);
        self.changed.notify_all();
        Subscription {
            board: Arc::clone(self),
            next: resume.map_or(oldest, |seq| seq + 1),
            fresh: resume.is_none(),
            dropped: 0,
            status_sent: None,
        }
    }
}

/// One browser's place on the board. Dropping it counts the browser gone.
pub struct Subscription {
    board: Arc<Board>,
    /// The sequence number of the next event this browser is to get.
    next: u64,
    /// Whether the browser must be told to clear what it has (a `reset`) before the events.
    fresh: bool,
    /// Points this browser skipped because it fell behind the history.
    dropped: u64,
    /// The status version and dropped count last sent, if any.
    status_sent: Option<(u64, u64)>,
}

/// What to write to one browser next.
#[derive(Debug, Default)]
pub struct Batch {
    /// Ready-to-write stream text, in order: the reset, events, the status.
    pub frames: Vec<Arc<str>>,
    /// Events among `frames`.
    pub events: usize,
}

impl Subscription {
    /// Wait up to `patience` for something new, and return it; an empty batch means
    /// nothing came (time for a keep-alive).
    pub fn next_batch(&mut self, patience: Duration) -> Batch {
        let board = Arc::clone(&self.board);
        let deadline = Instant::now() + patience;
        let mut state = board.lock();
        loop {
            let oldest = state.next - state.events.len() as u64;
            if self.next < oldest {
                // Fallen behind what the history holds: skip to the oldest kept.
                let skipped = oldest - self.next;
                self.dropped += skipped;
                state.counts.dropped += skipped;
                state.status_version += 1;
                self.next = oldest;
            }
            let status_now = (state.status_version, self.dropped);
            if self.next < state.next || self.status_sent != Some(status_now) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Batch::default();
            }
            state = board
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }

        let mut batch = Batch::default();
        if self.fresh {
            self.fresh = false;
            batch
                .frames
                .push(format!("event: reset\ndata: \"{}\"\n\n", board.run).into());
        }
        let oldest = state.next - state.events.len() as u64;
        let from = (self.next - oldest) as usize;
        let to = state.events.len().min(from + BATCH);
        batch.frames.extend(state.events.range(from..to).cloned());
        batch.events = to - from;
        self.next += batch.events as u64;
        // The status goes last, once the browser has every event up to now: the page takes
        // its first status as "caught up with the history".
        let status_now = (state.status_version, self.dropped);
        if self.next == state.next && self.status_sent != Some(status_now) {
            self.status_sent = Some(status_now);
            batch
                .frames
                .push(status_frame(&state.counts, self.dropped).into());
        }
        batch
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.board.update(|counts| counts.browsers -= 1);
    }
}

/// The `status` event: the board's counts, and what this browser skipped.
fn status_frame(counts: &Counts, dropped_here: u64) -> String {
    // Not `drawn`: it changes with every line, and the page counts the points it gets.
    let status = serde_json::json!({
        "bad": counts.bad,
        "dropped": dropped_here,
        "dropped_all": counts.dropped,
        "passthrough_lost": counts.passthrough_lost,
        "passthrough_open": counts.passthrough_open,
        "input_open": counts.input_open,
        "browsers": counts.browsers,
    });
    format!("event: status\ndata: {status}\n\n")
}

/// The counts as JSON, for `GET /stats`.
pub fn stats_json(counts: &Counts) -> String {
    serde_json::json!({
        "drawn": counts.drawn,
        "bad": counts.bad,
        "dropped": counts.dropped,
        "passthrough_lost": counts.passthrough_lost,
        "passthrough_open": counts.passthrough_open,
        "input_open": counts.input_open,
        "browsers": counts.browsers,
    })
    .to_string()
}
