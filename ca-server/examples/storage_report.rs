//! For `bench/storage.sh`: what each record of a sled store costs. Opens the store (the server
//! stopped), reads every tree once, and prints a Markdown table: records, key and value bytes,
//! and bytes per certificate (the `certs` tree's record count), then the directory's size on
//! disk against the logical bytes (sled's own overhead: its log, page headers, free space).
//!
//! Usage: `storage_report STORE_DIR`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: storage_report STORE_DIR"))?;
    let db = sled::Config::new().path(&dir).open()?;
    let mut rows = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name)?;
        let (mut n, mut k, mut v) = (0u64, 0u64, 0u64);
        for kv in tree.iter() {
            let (key, val) = kv?;
            n += 1;
            k += key.len() as u64;
            v += val.len() as u64;
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        let name = if name == "__sled__default" {
            "(default)".to_string()
        } else {
            name
        };
        rows.push((name, n, k, v));
    }
    drop(db);
    let certs = rows
        .iter()
        .find(|r| r.0 == "certs")
        .map_or(0, |r| r.1)
        .max(1);
    println!("certificates in the store: {certs}");
    println!();
    println!("| tree | records | key bytes | value bytes | bytes/record | bytes/certificate |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut total = 0u64;
    rows.sort_by_key(|r| std::cmp::Reverse(r.2 + r.3));
    for (name, n, k, v) in &rows {
        if *n == 0 {
            continue;
        }
        total += k + v;
        println!(
            "| {name} | {n} | {k} | {v} | {} | {:.0} |",
            (k + v) / n,
            (k + v) as f64 / certs as f64
        );
    }
    let disk = du(std::path::Path::new(&dir))?;
    println!(
        "| **logical total** | | | | | **{:.0}** |",
        total as f64 / certs as f64
    );
    println!(
        "| **on disk** ({:.1} MB) | | | | | **{:.0}** |",
        disk as f64 / 1e6,
        disk as f64 / certs as f64
    );
    Ok(())
}

/// Bytes allocated on disk under `p` (as `du`: blocks, not apparent sizes).
fn du(p: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p)?;
    let mut n = m.blocks() * 512;
    if m.is_dir() {
        for e in std::fs::read_dir(p)? {
            n += du(&e?.path())?;
        }
    }
    Ok(n)
}
