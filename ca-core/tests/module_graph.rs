//! The top-level modules of ca-core import each other without cycles (docs/DESIGN.md, "Roles
//! and their homes"): a module's role can be read, tested and replaced without the others.
//! An edge is any `crate::MODULE` path in a module's code (comments and unit tests left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module -> the modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let name = file.file_name().unwrap().to_string_lossy();
        if top == "lib" || name == "tests.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        let deps = graph.entry(top.clone()).or_default();
        for line in code.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let module: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !module.is_empty() && module != top {
                    deps.insert(module);
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    node: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in graph.get(node).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_string());
            return Some(cycle);
        }
        if graph.contains_key(next) && seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = cycle_from(graph, start, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    let graph = graph();
    // The parser sees the modules it must see (a broken walk would find no cycle either).
    for (module, dep) in [
        ("issuance", "signer"),
        ("authority", "store"),
        ("crl", "x509"),
    ] {
        assert!(
            graph.get(module).is_some_and(|d| d.contains(dep)),
            "{module} -> {dep} not found in {graph:?}"
        );
    }
    let mut cycles = Vec::new();
    for module in graph.keys() {
        let mut path = vec![module.clone()];
        if let Some(c) = cycle_from(&graph, module, module, &mut path, &mut BTreeSet::new()) {
            cycles.push(c.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}
