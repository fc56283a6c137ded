//! A browser is a client: a plain `GET /` (no `Upgrade`) is answered with `page.html`, a
//! page that opens a WebSocket back to the address it came from. (Chromium refuses a
//! WebSocket to a loopback address from a blank tab; from a page the server served, it
//! is the same origin, and allowed.)

/// The page, built into the binary: no file to find at run time, nothing from elsewhere.
pub const PAGE: &str = include_str!("page.html");

/// The whole HTTP response carrying the page. The connection closes after it, like every
/// answer of ours that is no upgrade; the browser then opens its WebSocket.
pub fn response() -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{PAGE}",
        PAGE.len()
    )
}
