//! Imports point one way, down the layers ARCHITECTURE.md draws: a module may use its own
//! layer and the ones below it, never one above (a front end is used by nothing, and
//! nothing imports the command line). Read from the sources, so that a new `use` that
//! breaks the order fails here, naming the file and the line.

use std::path::Path;

/// Each top-level module of `src/` and its layer, from the bottom up.
const LAYERS: &[(&str, u32)] = &[
    ("units", 0),
    ("memory", 1),
    ("nn", 2),
    ("data", 2),
    ("comm", 2),
    ("config", 3),
    ("gpu", 4),
    ("train", 5),
    ("session", 6),
    ("check", 7),
    ("bench", 7),
    ("lesson", 8),
    ("tui", 9),
    ("cli", 10),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules `line` names as `crate::X`.
fn used(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .map(|(i, _)| {
            let rest = &line[i + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut modules_seen = std::collections::BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let module = top.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue; // (the crate root and the binary stand above every layer)
        }
        let Some(mine) = layer(&module) else {
            panic!("src/{top} is in no layer: give it one in LAYERS and in ARCHITECTURE.md");
        };
        modules_seen.insert(module.clone());
        for (n, line) in std::fs::read_to_string(file).unwrap().lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for other in used(line) {
                let Some(theirs) = layer(other) else { continue };
                if other != module && theirs >= mine {
                    wrong.push(format!(
                        "src/{}:{}: {module} uses {other}: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up or sideways:\n{}",
        wrong.join("\n")
    );
    // (the layer list keeps up with the modules)
    for (m, _) in LAYERS {
        assert!(modules_seen.contains(*m), "LAYERS names {m}, which src/ no longer has");
    }
}

#[test]
fn nothing_outside_the_command_line_uses_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("benches"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("ddlab::cli"), "{} uses the command line", file.display());
    }
}

#[test]
fn the_layer_reader_sees_what_a_use_names() {
    assert_eq!(used("use crate::cli::ExitError;"), ["cli"]);
    assert_eq!(used("let x = crate::units::bytes(crate::nn::X);"), ["units", "nn"]);
    assert!(used("use super::ExitError;").is_empty());
}
