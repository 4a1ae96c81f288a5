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

/// The vocabulary `session` offers front ends: each `pub use crate::M::…` of
/// `src/session/mod.rs`, as (top-level module M, the names it re-exports).
fn vocabulary(session: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for statement in session.split(';') {
        let Some(at) = statement.find("pub use crate::") else {
            continue;
        };
        let path = &statement[at + "pub use crate::".len()..];
        let top = path.split("::").next().unwrap_or_default().to_string();
        let names = path
            .rsplit("::")
            .next()
            .unwrap_or_default()
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|n| !n.is_empty() && *n != "self")
            .map(str::to_string)
            .collect();
        out.push((top, names));
    }
    out
}

/// The vocabulary names `text` reaches for through their home module instead of
/// through `session`, with their line numbers: every `crate::M::…` path or `use` group
/// (over as many lines as it takes) that names one of the names session re-exports
/// from M.
fn named_below(text: &str, vocabulary: &[(String, Vec<String>)]) -> Vec<(usize, String)> {
    // (comment lines say nothing: blank them, keeping the line count)
    let code: String = text
        .lines()
        .map(|l| if l.trim_start().starts_with("//") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let top: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let names: Vec<&String> = vocabulary
            .iter()
            .filter(|(m, _)| *m == top)
            .flat_map(|(_, names)| names)
            .collect();
        if names.is_empty() {
            continue;
        }
        // The path after the module: `a::B` or a `{ … }` group (nested groups too).
        let mut depth = 0;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '{' => depth += 1,
                    '}' if depth > 0 => depth -= 1,
                    _ => {}
                }
                depth == 0 && !(c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '}')
            })
            .map_or(rest.len(), |(i, _)| i);
        for ident in rest[..end].split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if names.iter().any(|n| *n == ident) {
                found.push((code[..at].matches('\n').count() + 1, format!("crate::{top}::…{ident}")));
            }
        }
    }
    found
}

#[test]
fn front_ends_name_the_vocabulary_through_session() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let vocabulary = vocabulary(&std::fs::read_to_string(src.join("session/mod.rs")).unwrap());
    assert!(
        vocabulary
            .iter()
            .any(|(m, names)| m == "train" && names.iter().any(|n| n == "Event")),
        "session/mod.rs no longer re-exports the vocabulary this test reads: {vocabulary:?}"
    );
    let mut files = Vec::new();
    sources(&src.join("tui"), &mut files);
    sources(&src.join("cli"), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, path) in named_below(&text, &vocabulary) {
            let rel = file.strip_prefix(&src).unwrap();
            wrong.push(format!(
                "src/{}:{line}: {path}: name it through crate::session",
                rel.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "front ends reaching past session for its vocabulary:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_vocabulary_reader_sees_a_name_wherever_a_use_puts_it() {
    let vocabulary = vocabulary("pub use crate::train::{Event, Phase};\npub use crate::config::flags::{FlagValue};");
    assert_eq!(
        vocabulary,
        [
            ("train".to_string(), vec!["Event".to_string(), "Phase".to_string()]),
            ("config".to_string(), vec!["FlagValue".to_string()])
        ]
    );
    let text = "use crate::train::{\n    self,\n    Event,\n};\nlet p = crate::train::Phase::Push;\n// crate::train::Event\nuse crate::config::flags::FlagValue;\nuse crate::train::spawn;\nuse crate::session::Event;";
    assert_eq!(
        named_below(text, &vocabulary),
        [
            (1, "crate::train::…Event".to_string()),
            (5, "crate::train::…Phase".to_string()),
            (7, "crate::config::…FlagValue".to_string())
        ]
    );
}
