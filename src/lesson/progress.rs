//! The learner's progress, saved in the user's data directory and written atomically
//! (a temporary file, synced, then renamed over the old one): a crash mid-write leaves
//! the previous progress whole. A corrupt file is set aside and reported, never fatal.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LessonProgress {
    /// The page to resume at (0-based).
    pub page: usize,
    pub visited: BTreeSet<usize>,
    /// Prompts done, as "page:prompt".
    #[serde(default)]
    pub tries_done: BTreeSet<String>,
    /// Quiz answers, "page:question" → answered right.
    #[serde(default)]
    pub quiz: BTreeMap<String, bool>,
    pub completed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// By lesson id.
    pub lessons: BTreeMap<String, LessonProgress>,
}

pub struct ProgressStore {
    /// None: nowhere to save (no home directory); progress lives for the session only.
    pub path: Option<PathBuf>,
    pub progress: Progress,
    /// Something the learner should know (a corrupt file set aside, a failed save).
    pub warning: Option<String>,
}

/// `$DDLAB_DATA_DIR`, else `$XDG_DATA_HOME/ddlab`, else `~/.local/share/ddlab`.
pub fn data_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("DDLAB_DATA_DIR")
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("ddlab")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/ddlab")))
}

impl ProgressStore {
    /// The progress file in the user's data directory.
    pub fn open_default() -> ProgressStore {
        match data_dir() {
            Some(dir) => ProgressStore::open(&dir.join("progress.json")),
            None => ProgressStore {
                path: None,
                progress: Progress::default(),
                warning: Some("no home directory: lesson progress will not be saved".into()),
            },
        }
    }

    pub fn open(path: &Path) -> ProgressStore {
        let mut store = ProgressStore {
            path: Some(path.to_path_buf()),
            progress: Progress::default(),
            warning: None,
        };
        match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                store.warning = Some(format!(
                    "could not read {}: {e}; progress starts afresh",
                    path.display()
                ))
            }
            Ok(bytes) => match serde_json::from_slice::<Progress>(&bytes) {
                Ok(p) => store.progress = p,
                Err(e) => {
                    let aside = set_aside(path);
                    store.warning = Some(if let Some(aside) = aside {
                        format!(
                            "the progress file {} was unreadable ({e}); it is kept as {} and progress starts afresh",
                            path.display(),
                            aside.display()
                        )
                    } else {
                        format!(
                            "the progress file {} was unreadable ({e}); progress starts afresh",
                            path.display()
                        )
                    });
                }
            },
        }
        store
    }

    pub fn lesson(&mut self, id: &str) -> &mut LessonProgress {
        self.progress.lessons.entry(id.to_string()).or_default()
    }

    /// Writes the progress atomically.
    pub fn save(&mut self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let result = write_atomically(
            path,
            &serde_json::to_vec_pretty(&self.progress).map_err(|e| e.to_string())?,
        );
        if let Err(e) = &result {
            self.warning = Some(format!("could not save lesson progress to {}: {e}", path.display()));
        }
        result
    }
}

/// Moves a corrupt `path` to `<path>.corrupt-<secs>` (then `-2`, `-3`, … when that is
/// taken: two files can go bad in one second), never over an earlier one; returns where
/// it went, or None if it could not be moved.
fn set_aside(path: &Path) -> Option<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path.file_name()?.to_string_lossy();
    (1..1000)
        .map(|n| match n {
            1 => path.with_file_name(format!("{name}.corrupt-{secs}")),
            n => path.with_file_name(format!("{name}.corrupt-{secs}-{n}")),
        })
        // A hard link fails on a name that exists, where a rename would replace it; where
        // links are not supported, a rename to a name that is free.
        .find_map(|aside| match std::fs::hard_link(path, &aside) {
            Ok(()) => {
                let _ = std::fs::remove_file(path); // (if it stays, the next save replaces it)
                Some(Some(aside))
            }
            Err(_) if aside.exists() => None,
            Err(_) => Some(std::fs::rename(path, &aside).is_ok().then_some(aside)),
        })
        .flatten()
}

/// Writes `bytes` to `path` so that `path` holds either the old or the new content,
/// whole, whatever happens.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("progress"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_the_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/progress.json");
        let mut store = ProgressStore::open(&path);
        assert!(store.warning.is_none());
        store.lesson("01").page = 3;
        store.lesson("01").quiz.insert("0:0".into(), true);
        store.save().unwrap();
        let again = ProgressStore::open(&path);
        assert_eq!(again.progress, store.progress);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("progress.json")]);
    }

    #[test]
    fn setting_aside_never_replaces_a_file_set_aside_earlier_in_the_same_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.json");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // earlier ones, for this second and the next (should the clock tick meanwhile)
        for secs in [now, now + 1] {
            std::fs::write(dir.path().join(format!("progress.json.corrupt-{secs}")), b"earlier").unwrap();
        }
        std::fs::write(&path, b"later").unwrap();
        let aside = set_aside(&path).expect("moved");
        assert!(aside.to_string_lossy().ends_with("-2"), "{}", aside.display());
        assert_eq!(std::fs::read(&aside).unwrap(), b"later");
        assert!(!path.exists());
        for secs in [now, now + 1] {
            assert_eq!(
                std::fs::read(dir.path().join(format!("progress.json.corrupt-{secs}"))).unwrap(),
                b"earlier"
            );
        }
    }

    #[test]
    fn a_corrupt_file_is_set_aside_and_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.json");
        std::fs::write(&path, b"{\"lessons\": {\"01\": tru").unwrap();
        let mut store = ProgressStore::open(&path);
        let warning = store.warning.clone().expect("a warning");
        assert!(
            warning.contains("unreadable") && warning.contains("corrupt"),
            "{warning}"
        );
        assert_eq!(store.progress, Progress::default());
        // the corrupt bytes are kept beside it
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("progress.json.corrupt-"))
            .collect();
        assert_eq!(kept.len(), 1);
        // a second corrupt file in the same second is kept beside the first, not over it
        std::fs::write(&path, b"second").unwrap();
        let second = ProgressStore::open(&path).warning.expect("a warning");
        let kept: BTreeSet<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("progress.json.corrupt-"))
            .collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        let contents: BTreeSet<Vec<u8>> = kept
            .iter()
            .map(|n| std::fs::read(dir.path().join(n)).unwrap())
            .collect();
        assert!(contents.contains(&b"second"[..]) && contents.len() == 2);
        // and each warning names the file it kept
        assert!(kept.iter().any(|n| second.contains(n.as_str())), "{second}");
        assert!(kept.iter().any(|n| warning.contains(n.as_str())), "{warning}");
        // and saving works again
        store.lesson("02").completed = true;
        store.save().unwrap();
        assert!(ProgressStore::open(&path).progress.lessons["02"].completed);
    }
}
