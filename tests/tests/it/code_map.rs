//! ARCHITECTURE.md's code map names every source file: a file under a crate's
//! `src/` that the map does not name fails this test, so the map cannot fall
//! behind the code.
//!
//! A row names a file by its whole path (`agent/src/host.rs`), by a brace
//! group (`agent/src/{file,directory}.rs`), or by a folder (`proto/src/spec/`)
//! together with the file's path below that folder in the same row
//! (`model.rs`): naming only the folder does not cover a new file in it.

use std::path::{Path, PathBuf};

const CRATES: [&str; 4] = ["proto", "controller", "agent", "tests"];

#[test]
fn every_source_file_is_in_the_code_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let rows = code_map_rows(&architecture);
    assert!(
        !rows.is_empty(),
        "ARCHITECTURE.md has no `## Code map` table"
    );

    let mut missing = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for file in files {
            let rel = file
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !rows.iter().any(|row| row_names(row, &rel)) {
                missing.push(rel);
            }
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name these source files (add a row, or add \
         them to the row of their folder):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn code_map_rows_name_files_by_path_brace_group_or_folder_and_name() {
    let rows = code_map_rows(
        "## Code map\n\n| Path | What |\n|---|---|\n\
         | `agent/src/host.rs` | door |\n\
         | `agent/src/{file,cron}.rs` | kinds |\n\
         | `proto/src/spec/` | `model.rs` and `parse.rs` |\n\n## Next\n| `x/src/y.rs` | no |\n",
    );
    assert_eq!(rows.len(), 3);
    let named = |p: &str| rows.iter().any(|r| row_names(r, p));
    assert!(named("agent/src/host.rs"));
    assert!(named("agent/src/cron.rs"));
    assert!(named("proto/src/spec/model.rs"));
    assert!(
        !named("proto/src/spec/render.rs"),
        "a folder alone covers nothing"
    );
    assert!(!named("agent/src/user.rs"));
    assert!(!named("x/src/y.rs"), "only the code map section counts");
}

/// The table rows of the `## Code map` section, each as its backticked names.
fn code_map_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            inside = heading.trim().eq_ignore_ascii_case("code map");
            continue;
        }
        if inside && line.trim_start().starts_with('|') {
            let names: Vec<String> = line
                .split('`')
                .skip(1)
                .step_by(2)
                .flat_map(expand_braces)
                .collect();
            if !names.is_empty() {
                rows.push(names);
            }
        }
    }
    rows
}

/// `a/{b,c}.rs` → `a/b.rs`, `a/c.rs`; one brace group at most.
fn expand_braces(name: &str) -> Vec<String> {
    match (name.find('{'), name.find('}')) {
        (Some(open), Some(close)) if open < close => name[open + 1..close]
            .split(',')
            .map(|part| format!("{}{}{}", &name[..open], part.trim(), &name[close + 1..]))
            .collect(),
        _ => vec![name.to_string()],
    }
}

fn row_names(row: &[String], path: &str) -> bool {
    row.iter().any(|name| {
        name == path
            || name.strip_suffix('/').is_some_and(|_| {
                path.strip_prefix(name.as_str())
                    .is_some_and(|below| row.iter().any(|other| other == below))
            })
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
