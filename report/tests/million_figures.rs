//! The million's figures quoted in the READMEs are those of the committed run,
//! `slides/figures/million.json`, formatted as the report formats them.

use std::path::Path;

use serde_json::Value;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn bytes(m: &Value, key: &str) -> String {
    let value = m[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in million.json"));
    common::format_bytes(value)
}

/// The top README's "One million" and step08's README quote the committed run's figures.
#[test]
fn readmes_quote_the_committed_million_run() {
    let m: Value = serde_json::from_str(&read("slides/figures/million.json")).unwrap();
    let (held, conns) = (m["held"].as_u64().unwrap(), m["conns"].as_u64().unwrap());
    let top = read("README.md");
    let section = &top[top
        .find("## One million")
        .expect("a `## One million` section")..];
    for figure in [
        format!("{held} of {conns}"),
        bytes(&m, "server_user_per_conn"),
        bytes(&m, "kernel_per_conn"),
        bytes(&m, "loadgen_per_conn"),
        bytes(&m, "worker_bases_bytes"),
        format!("{:.0} s", m["open_seconds"].as_f64().unwrap()),
    ] {
        assert!(
            section.contains(&figure),
            "README's One million lacks `{figure}`"
        );
    }
    let step08 = read("step08-reuseport/README.md");
    for figure in [
        format!("{held} connections held"),
        bytes(&m, "server_user_per_conn"),
        bytes(&m, "kernel_per_conn"),
    ] {
        assert!(step08.contains(&figure), "step08's README lacks `{figure}`");
    }
}
