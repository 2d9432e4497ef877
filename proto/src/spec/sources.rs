//! Reading YAML sources from disk: files as given, directories as their
//! `*.yaml` and `*.yml` files. Behind the `files` feature, which only the
//! two binaries turn on (`ballast apply`/`diff`, `ballast-agent apply`): the
//! wire contract and the model touch no files, and the parser takes sources
//! as name and text.

use super::Source;

/// Reads YAML sources from files as given and from directories (their
/// `*.yaml` and `*.yml` files, sorted, not recursive).
pub fn read_sources(paths: &[std::path::PathBuf]) -> Result<Vec<Source>, String> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("list {}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(format!(
                    "{}: no *.yaml or *.yml files in this directory",
                    path.display()
                ));
            }
            files.extend(entries);
        } else {
            files.push(path.clone());
        }
    }
    files
        .into_iter()
        .map(|f| {
            Ok(Source {
                text: std::fs::read_to_string(&f)
                    .map_err(|e| format!("read {}: {e}", f.display()))?,
                name: f.display().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Directories give their `*.yaml` and `*.yml` files sorted (no others,
    /// no recursion); files are taken as given; errors name the path.
    #[test]
    fn read_sources_picks_sorted_yaml_of_directories_and_files_as_given() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("site");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for (name, text) in [("b.yaml", "b"), ("a.yml", "a"), ("c.txt", "c")] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        std::fs::write(dir.join("sub/d.yaml"), "d").unwrap();
        let extra = tmp.path().join("extra.conf");
        std::fs::write(&extra, "e").unwrap();
        let got: Vec<(String, String)> = read_sources(&[dir.clone(), extra.clone()])
            .unwrap()
            .into_iter()
            .map(|s| (s.name, s.text))
            .collect();
        let name = |p: std::path::PathBuf| p.display().to_string();
        assert_eq!(
            got,
            [
                (name(dir.join("a.yml")), "a".to_owned()),
                (name(dir.join("b.yaml")), "b".to_owned()),
                (name(extra), "e".to_owned()),
            ]
        );
        let empty = dir.join("sub/empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(
            read_sources(std::slice::from_ref(&empty)).unwrap_err(),
            format!(
                "{}: no *.yaml or *.yml files in this directory",
                empty.display()
            )
        );
        let missing = tmp.path().join("missing.yaml");
        assert_eq!(
            read_sources(std::slice::from_ref(&missing)).unwrap_err(),
            format!(
                "read {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }
}
