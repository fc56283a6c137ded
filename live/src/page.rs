//! The page, built into the binary: one HTML file with its script and style inline, so it
//! needs no network (a venue may have none). `page.html` is the page; this module fills in
//! the look it shares with the report's charts.

use std::sync::OnceLock;

/// The report's palette (report/src/charts.rs): Okabe & Ito's, without its yellow. A step's
/// colour is `PALETTE[k % 7]`, its marker shape `k % 4`, where k is its place in the run.
pub const PALETTE: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];

/// The steps in the lesson's order (report/src/steps.rs): a step's place k when no `plan`
/// event has said which steps this run has.
pub const LESSON: &[&str] = &[
    "step01-blocking",
    "step02-threads",
    "step03-select",
    "step04-poll",
    "step05-epoll",
    "step06-ws-epoll",
    "step07-tokio",
    "step07-tokio/4k",
    "step08-reuseport",
    "step09-io-uring",
];

const TEMPLATE: &str = include_str!("page.html");

/// The page, with the palette and the lesson's order written into its script.
pub fn html() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        let look = format!(
            "const PALETTE = {};\nconst LESSON = {};",
            serde_json::json!(PALETTE),
            serde_json::json!(LESSON)
        );
        TEMPLATE.replace("/* LOOK */", &look)
    })
}
