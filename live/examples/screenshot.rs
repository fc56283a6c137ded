//! `cargo run --release -p live --example screenshot -- http://127.0.0.1:9100/ live.png`
//!
//! What a projector shows: the page at URL in headless Chromium at 1280×720, once it has
//! drawn its history, saved as a PNG. The figure in slides/figures/ was taken so.

use std::time::Duration;

use stepcheck::chromium;
use stepcheck::devtools::{Browser, DevTools};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: screenshot URL OUT.png");
        std::process::exit(2);
    };
    let Some(chromium) = chromium::find() else {
        eprintln!("screenshot: no Chromium (apt-get install chromium)");
        std::process::exit(1);
    };
    let browser = Browser::launch(&chromium, "live-screenshot");
    let mut tab = DevTools::open(&browser, &url);
    if !tab.wait_for(
        "typeof live !== 'undefined' && live.caughtUp && live.draws > 0",
        Duration::from_secs(20),
    ) {
        eprintln!("screenshot: the page at {url} drew nothing within 20 s");
        std::process::exit(1);
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&out, tab.screenshot())
        .unwrap_or_else(|err| panic!("cannot write {out}: {err}"));
    eprintln!("screenshot: wrote {out}");
    drop(tab);
    browser.close();
}
