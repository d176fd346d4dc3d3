//! No import circle between the modules of `libbus` and `busd`: each module
//! is read from its source file, every `crate::` and `super::` path it uses
//! (outside its `#[cfg(test)]` module) is resolved to the module that holds
//! it (names re-exported at the crate root to the module they come from),
//! and the graph must have no cycle. A cycle fails the test with its path.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// A module: its path from the crate root (`["cluster", "link"]`).
type Module = Vec<String>;

fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                parts.clear();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The source without its test module (by this project's convention the
/// last item of a file) and without comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a file names from `root` (`crate` or `super`), as segments,
/// with `use root::{a::b, c::{d, e}}` groups expanded to their first level.
fn paths_from(code: &str, root: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let needle = format!("{root}::");
    let mut rest = code;
    while let Some(at) = rest.find(&needle) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + needle.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group's top level on commas.
            let (mut depth, mut item, mut items) = (0, String::new(), Vec::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            items.push(item);
            for item in items {
                let segs = segments(&item);
                if !segs.is_empty() {
                    out.push(segs);
                }
            }
        } else {
            out.push(segments(rest));
        }
    }
    out
}

/// The leading `a::b::c` of `s`, as segments.
fn segments(s: &str) -> Vec<String> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    s[..end]
        .split("::")
        .filter(|p| !p.is_empty() && *p != "self")
        .map(str::to_owned)
        .collect()
}

/// Names the crate root re-exports (`pub use a::b::{X, Y}`), by the module
/// they come from.
fn root_exports(root: &str, known: &BTreeMap<Module, PathBuf>) -> BTreeMap<String, Module> {
    let mut out = BTreeMap::new();
    for line in root.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let (path, names) = match rest.split_once("::{") {
            Some((p, n)) => (p, n.trim_end_matches('}')),
            None => match rest.rsplit_once("::") {
                Some((p, n)) => (p, n),
                None => continue,
            },
        };
        let module = resolve(&segments(path), known);
        for name in names.split(',') {
            let name = name.trim();
            if !name.is_empty() {
                out.insert(name.to_owned(), module.clone());
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &[String], known: &BTreeMap<Module, PathBuf>) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| known.contains_key(m))
        .unwrap_or_default()
}

fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let known = modules(src);
    let root = known.get(&Vec::new()).map(|p| code(p)).unwrap_or_default();
    let exports = root_exports(&root, &known);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, path) in &known {
        if module.is_empty() {
            continue;
        }
        let text = code(path);
        let parent = &module[..module.len() - 1];
        let mut targets = Vec::new();
        for p in paths_from(&text, "crate") {
            let target = match p.first().and_then(|n| exports.get(n)) {
                Some(m) if p.len() == 1 || !known.contains_key(&p[..1]) => m.clone(),
                _ => resolve(&p, &known),
            };
            targets.push(target);
        }
        for p in paths_from(&text, "super") {
            let mut full = parent.to_vec();
            full.extend(p);
            targets.push(resolve(&full, &known));
        }
        let out = edges.entry(module.clone()).or_default();
        for t in targets {
            // The root only re-exports; a module's own items are no edge.
            if !t.is_empty() && &t != module {
                out.insert(t);
            }
        }
    }
    edges
}

/// A cycle in `edges`, if there is one, as the modules along it.
fn cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|p| p == m).unwrap_or(0);
                let mut c = path[from..].to_vec();
                c.push(m.clone());
                return Some(c);
            }
            _ => {}
        }
        state.insert(m.clone(), 1);
        path.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut state, &mut Vec::new()))
}

fn check(krate: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let edges = graph(&src);
    assert!(
        edges.len() > 5,
        "{krate}: too few modules found in {}",
        src.display()
    );
    if let Some(c) = cycle(&edges) {
        let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
        panic!("{krate}: import circle: {}", names.join(" -> "));
    }
}

#[test]
fn libbus_has_no_import_circle() {
    check("libbus");
}

#[test]
fn busd_has_no_import_circle() {
    check("busd");
}

#[test]
fn the_checker_finds_a_circle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\npub use a::A;\n").expect("write");
    std::fs::write(src.join("a.rs"), "use crate::{b::B, c};\npub struct A;\n").expect("write");
    std::fs::write(src.join("b.rs"), "use crate::A;\npub struct B;\n").expect("write");
    std::fs::write(src.join("c.rs"), "// use crate::a;\n").expect("write");
    let c = cycle(&graph(src)).expect("a -> b -> a");
    assert_eq!(c.len(), 3, "{c:?}");
    std::fs::write(
        src.join("b.rs"),
        "pub struct B;\n#[cfg(test)]\nmod tests { use crate::A; }\n",
    )
    .expect("write");
    assert_eq!(cycle(&graph(src)), None);
}
