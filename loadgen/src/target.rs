//! Where the connections go: `tcp://127.0.0.1:9005` (raw bytes, steps 01–05) or
//! `ws://127.0.0.1:9006/` (WebSocket messages, steps 06–07).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// What is spoken on each connection once it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Raw bytes: whatever is written comes back, byte for byte.
    Tcp,
    /// An HTTP upgrade first, then WebSocket binary messages echoed whole.
    WebSocket,
}

/// A parsed `tcp://` or `ws://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What each connection speaks.
    pub protocol: Protocol,
    /// The server's address; always on loopback (see [`Target::from_str`]).
    pub addr: SocketAddr,
    /// The URL as given (with `localhost` kept), sent in the WebSocket handshake.
    pub url: String,
}

impl FromStr for Target {
    type Err = String;

    /// Accepts `tcp://HOST:PORT` and `ws://HOST:PORT[/PATH]`, where HOST is an IP address or
    /// `localhost`. Only loopback addresses (127.0.0.0/8, ::1) are accepted: this tool opens
    /// thousands of connections and belongs on your own machine, never pointed at someone
    /// else's.
    fn from_str(url: &str) -> Result<Target, String> {
        let (protocol, rest) = if let Some(rest) = url.strip_prefix("tcp://") {
            (Protocol::Tcp, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (Protocol::WebSocket, rest)
        } else if url.starts_with("wss://") {
            return Err(format!(
                "`{url}`: wss:// (TLS) is not supported; the steps speak plain ws://"
            ));
        } else {
            return Err(format!("`{url}` must start with tcp:// or ws://"));
        };

        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if protocol == Protocol::Tcp && !matches!(path, "" | "/") {
            return Err(format!("`{url}`: a tcp:// target has no path"));
        }

        let addr = parse_authority(authority).map_err(|why| format!("`{url}`: {why}"))?;
        if addr.port() == 0 {
            return Err(format!(
                "`{url}`: port 0 is no server's port (it means \"any free port\" to bind)"
            ));
        }
        if !addr.ip().is_loopback() {
            return Err(format!(
                "`{url}`: {} is not a loopback address; loadgen only connects to this machine \
                 (127.0.0.0/8 or [::1])",
                addr.ip()
            ));
        }

        // tungstenite wants a path in the request line; `ws://host:port` means `/`.
        let url = match (protocol, path) {
            (Protocol::WebSocket, "") => format!("{url}/"),
            _ => url.to_string(),
        };
        Ok(Target {
            protocol,
            addr,
            url,
        })
    }
}

/// `127.0.0.1:9005`, `[::1]:9005` or `localhost:9005`.
fn parse_authority(authority: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("`{authority}` needs a port, as in 127.0.0.1:9005"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` is not a port number"))?;
    let ip = match host {
        // Resolve `localhost` ourselves: a DNS look-up could answer ::1 or something odd.
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => host
            .parse()
            .map_err(|_| format!("`{host}` is not an IP address (or localhost)"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tcp:// or ws:// URL gives the protocol and the address to connect to.
    #[test]
    fn tcp_and_ws_urls_name_protocol_and_address() {
        let tcp: Target = "tcp://127.0.0.1:9005".parse().unwrap();
        assert_eq!(tcp.protocol, Protocol::Tcp);
        assert_eq!(tcp.addr, "127.0.0.1:9005".parse().unwrap());

        let ws: Target = "ws://127.0.0.1:9006/".parse().unwrap();
        assert_eq!(ws.protocol, Protocol::WebSocket);
        assert_eq!(ws.addr.port(), 9006);
        assert_eq!(ws.url, "ws://127.0.0.1:9006/");
    }

    /// A ws:// URL without a path gets `/`; localhost, [::1] and any 127.x address are loopback.
    #[test]
    fn ws_without_path_gets_a_slash_and_localhost_is_loopback() {
        let ws: Target = "ws://localhost:9007".parse().unwrap();
        assert_eq!(ws.url, "ws://localhost:9007/");
        assert_eq!(ws.addr, "127.0.0.1:9007".parse().unwrap());
        let v6: Target = "tcp://[::1]:9005".parse().unwrap();
        assert!(v6.addr.is_ipv6());
        let other_loopback: Target = "tcp://127.0.0.42:9005".parse().unwrap();
        assert_eq!(
            other_loopback.addr.ip(),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 42))
        );
    }

    /// URLs for another machine or scheme, without a port, or with a path on tcp:// are refused.
    #[test]
    fn refuses_other_machines_and_malformed_urls() {
        for bad in [
            "tcp://10.0.0.1:9005",
            "ws://192.168.1.1:9006/",
            "http://127.0.0.1:9005",
            "wss://127.0.0.1:9006/",
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:port",
            "tcp://127.0.0.1:9005/chat",
            "tcp://example.com:9005",
            "127.0.0.1:9005",
            "ws://127.0.0.1:0/",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad} should be refused");
        }
    }
}
