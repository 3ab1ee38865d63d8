//! Checks the boundaries ARCHITECTURE.md promises: which crate may depend on what, and that every module
//! says what it owns.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn crates() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(workspace().join("crates"))
        .expect("crates dir")
        .flatten()
    {
        let manifest = entry.path().join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            out.push((entry.file_name().to_string_lossy().into_owned(), text));
        }
    }
    out.sort();
    out
}

fn depends_on(manifest: &str, dependency: &str) -> bool {
    manifest.lines().any(|l| {
        l.trim_start().starts_with(&format!("{dependency} "))
            || l.trim_start().starts_with(&format!("{dependency}."))
    })
}

#[test]
fn only_the_store_knows_sql_and_only_the_server_knows_http_status_codes() {
    let crates = crates();
    assert!(crates.len() >= 8, "{crates:?}");
    for (name, manifest) in &crates {
        for (dependency, owner) in [("rusqlite", "aura-store"), ("axum", "aura-server")] {
            assert!(
                !depends_on(manifest, dependency) || name == owner,
                "{name} depends on {dependency}, which only {owner} may use"
            );
        }
    }
}

#[test]
fn only_the_binary_and_the_fuzz_crate_depend_on_the_server() {
    for (name, manifest) in crates() {
        assert!(
            !depends_on(&manifest, "aura-server") || name == "aura" || name == "aura-fuzz",
            "{name} depends on aura-server"
        );
    }
}

#[test]
fn the_model_is_pure() {
    let (_, model) = crates()
        .into_iter()
        .find(|(n, _)| n == "aura-model")
        .expect("aura-model");
    let dependencies = model.split("[dependencies]").nth(1).unwrap_or_default();
    let dependencies = dependencies.split("\n[").next().unwrap_or_default();
    for line in dependencies
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let name = line.split([' ', '.', '=']).next().unwrap_or_default();
        assert!(
            !name.starts_with("aura-")
                && !["tokio", "rusqlite", "axum", "libc", "rustix", "reqwest"].contains(&name),
            "aura-model must stay free of I/O and of other crates, but depends on {name}"
        );
    }
}

#[test]
fn every_module_says_what_it_owns() {
    let mut missing = Vec::new();
    let mut stack = vec![workspace().join("crates"), workspace().join("xtask")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                if !text.trim_start().starts_with("//!") {
                    missing.push(path);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules without a //! line: {missing:?}"
    );
}

#[test]
fn every_crate_inherits_the_workspace_lints() {
    for (name, manifest) in crates() {
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{name} does not inherit [workspace.lints]"
        );
    }
}

/// The modules of one crate (`src/<name>.rs`) each names through `crate::<module>`, test code left out.
fn module_imports(src: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    // A module is `src/<name>.rs`, or a folder `src/<name>/` (its files read together).
    let modules: Vec<String> = std::fs::read_dir(src)
        .expect("src dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().join("mod.rs").exists() {
                return Some(name);
            }
            let module = name.strip_suffix(".rs")?.to_owned();
            (module != "lib" && module != "main").then_some(module)
        })
        .collect();
    let read = |module: &str| -> String {
        let folder = src.join(module);
        if folder.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
                .expect("module folder")
                .flatten()
                .map(|e| e.path())
                .collect();
            files.sort();
            files
                .iter()
                .map(|f| std::fs::read_to_string(f).expect("module file"))
                .map(|t| {
                    t.split("#[cfg(test)]")
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            std::fs::read_to_string(src.join(format!("{module}.rs"))).expect("module")
        }
    };
    let mut graph = std::collections::BTreeMap::new();
    for module in &modules {
        let text = read(module);
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        // `use crate::{a, b::C}`: the first segment of every path in the group.
        let grouped: Vec<&str> = code
            .split("crate::{")
            .skip(1)
            .filter_map(|rest| rest.split('}').next())
            .flat_map(|group| group.split(','))
            .map(|path| path.trim().split("::").next().unwrap_or_default())
            .collect();
        let mut uses: Vec<String> = modules
            .iter()
            .filter(|other| *other != module)
            .filter(|other| {
                code.contains(&format!("crate::{other}::"))
                    || code.contains(&format!("crate::{other};"))
                    || grouped.contains(&other.as_str())
            })
            .cloned()
            .collect();
        uses.sort();
        graph.insert(module.clone(), uses);
    }
    graph
}

/// A cycle in `graph`, if there is one: the modules along it.
fn cycle(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut dirs: Vec<PathBuf> = crates()
        .into_iter()
        .map(|(name, _)| workspace().join("crates").join(name).join("src"))
        .collect();
    dirs.push(workspace().join("xtask/src"));
    for src in dirs {
        let graph = module_imports(&src);
        assert_eq!(cycle(&graph), None, "{}: {graph:?}", src.display());
    }
    // The check itself finds a cycle where there is one.
    let looped = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"])]
        .into_iter()
        .map(|(n, e)| (n.to_owned(), e.into_iter().map(str::to_owned).collect()))
        .collect();
    assert!(cycle(&looped).is_some());
}
