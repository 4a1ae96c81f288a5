//! The lesson format: the built-in course verifies headless; malformed lessons get one
//! clear error naming the file, the line and the key; an instructor's folder works like
//! the built-in one; no input makes the parser panic.

mod common;

use std::path::Path;

use proptest::prelude::*;

use common::ddlab;

const MANIFEST: &str = "format_version = 1\n\n[[lesson]]\nid = \"one\"\n";

const LESSON: &str = r#"title = "A tiny lesson"
summary = "two pages"
sources = ["nobody, 2026"]

[[page]]
title = "Start"
experiment = { workers = 2, steps = 60 }

[[page.check]]
metric = "test_accuracy"
op = ">="
value = 0.5
text = "two workers learn something in 60 steps"

[[page]]
title = "More"

[[page.claim]]
text = "async has stale gradients"
metric = "staleness_mean"
op = ">"
value = 0
with = { mode = "async", workers = 4 }
"#;

const PAGES: &str = "# Start\n\nTwo workers.\n---\n# More\n\nAsync.\n";

fn folder(manifest: &str, lesson: &str, pages: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("info.toml"), manifest).unwrap();
    std::fs::create_dir(dir.path().join("one")).unwrap();
    std::fs::write(dir.path().join("one/lesson.toml"), lesson).unwrap();
    std::fs::write(dir.path().join("one/pages.md"), pages).unwrap();
    dir
}

/// `ddlab lessons --lessons DIR` must fail with exit 2 and one line containing `want`.
fn refused(dir: &Path, want: &[&str]) {
    let out = ddlab().args(["lessons", "--lessons"]).arg(dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for w in want {
        assert!(stderr.contains(w), "should contain {w:?}: {stderr}");
    }
}

#[test]
fn every_built_in_lesson_check_and_claim_holds() {
    let out = ddlab().args(["lesson", "--check", "all"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(" 0 failed") || stdout.contains("held, 0 failed"),
        "{stdout}"
    );
    // every lesson but the tenth (which teaches commands, not runs) verifies something
    for n in (1..=9).chain(11..=12) {
        assert!(
            stdout.contains(&format!("lesson {n} page")),
            "lesson {n} checks nothing:\n{stdout}"
        );
    }
}

#[test]
fn the_built_in_course_lists_twelve_lessons() {
    let out = ddlab()
        .arg("lessons")
        .env("DDLAB_DATA_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains(" 1. One training step")
            && stdout.contains("10. Going to a cluster")
            && stdout.contains("11. Talking less: local SGD")
            && stdout.contains("12. Compressing gradients"),
        "{stdout}"
    );
}

#[test]
fn an_instructors_folder_is_loaded_and_checked_like_the_built_in_one() {
    let dir = folder(MANIFEST, LESSON, PAGES);
    let out = ddlab()
        .args(["lesson", "--check", "all", "--lessons"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("✓ lesson 1 page 1: two workers learn something"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ lesson 1 page 2: async has stale gradients"),
        "{stdout}"
    );
    assert!(stdout.contains("2 held, 0 failed"), "{stdout}");
    // a claim the lab does not bear out fails the check, with its figures
    let false_claim = LESSON.replace("value = 0.5", "value = 1.5");
    let dir = folder(MANIFEST, &false_claim, PAGES);
    let out = ddlab()
        .args(["lesson", "--check", "1", "--lessons"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("✗ lesson 1 page 1") && stdout.contains("≥ 1.5"),
        "{stdout}"
    );
}

#[test]
fn malformed_lessons_name_the_file_the_line_and_the_key() {
    // an unknown key (line 7 of lesson.toml)
    let dir = folder(
        MANIFEST,
        &LESSON.replace("title = \"Start\"", "title = \"Start\"\ncolour = \"red\""),
        PAGES,
    );
    refused(dir.path(), &["one/lesson.toml:7:", "unknown field `colour`"]);
    // a page without text
    let dir = folder(MANIFEST, LESSON, "# Start\n\nOnly one page.\n");
    refused(dir.path(), &["one/pages.md:", "1 pages of text", "2 [[page]] tables"]);
    // a bad value for an experiment flag, parsed as the command line parses it
    let dir = folder(
        MANIFEST,
        &LESSON.replace("workers = 2,", "workers = 2, mode = \"sideways\","),
        PAGES,
    );
    refused(dir.path(), &["one/lesson.toml:7:", "experiment key `mode`", "sideways"]);
    // a flag that does not exist
    let dir = folder(MANIFEST, &LESSON.replace("workers = 2,", "wrokers = 2,"), PAGES);
    refused(
        dir.path(),
        &[
            "one/lesson.toml:7:",
            "experiment key `wrokers`",
            "no such experiment flag",
        ],
    );
    // an experiment that validation refuses
    let dir = folder(MANIFEST, &LESSON.replace("workers = 2,", "workers = 0,"), PAGES);
    refused(dir.path(), &["one/lesson.toml:7:", "workers"]);
    // a prompt's action the lab cannot detect
    let with_try = LESSON.replace(
        "[[page.check]]",
        "[[page.try]]\nprompt = \"dance\"\naction = \"dance\"\n\n[[page.check]]",
    );
    refused(
        dir_of(&with_try).path(),
        &["one/lesson.toml:11:", "unknown variant `dance`"],
    );
    // a metric no run has
    refused(
        dir_of(&LESSON.replace("metric = \"test_accuracy\"", "metric = \"happiness\"")).path(),
        &["one/lesson.toml:", "happiness"],
    );
    // a broken manifest
    let dir = folder("format_version = 1\n[[lesson]\nid = \"one\"\n", LESSON, PAGES);
    refused(dir.path(), &["info.toml:2:"]);
    // a manifest from the future
    let dir = folder(
        &MANIFEST.replace("format_version = 1", "format_version = 2"),
        LESSON,
        PAGES,
    );
    refused(dir.path(), &["info.toml:1:", "format_version 2"]);
    // a lesson the manifest lists but the folder lacks
    let dir = folder(&format!("{MANIFEST}\n[[lesson]]\nid = \"two\"\n"), LESSON, PAGES);
    refused(dir.path(), &["info.toml:7:", "two/lesson.toml", "missing"]);
    // no manifest at all
    refused(
        tempfile::tempdir().unwrap().path(),
        &["info.toml:1:", "manifest is missing"],
    );
}

fn dir_of(lesson: &str) -> tempfile::TempDir {
    folder(MANIFEST, lesson, PAGES)
}

#[test]
fn bad_lesson_numbers_get_one_line() {
    for (args, says) in [
        (vec!["lesson", "13"], "there is no lesson 13"),
        (vec!["lesson", "--check", "0"], "there is no lesson 0"),
        (vec!["lesson", "--check", "some"], "give a lesson number or all"),
        (vec!["lesson"], "give a lesson number"),
    ] {
        let out = ddlab().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_parser_never_panics_on_arbitrary_text(toml in ".{0,400}", md in ".{0,200}") {
        let _ = ddlab::lesson::parse_lesson(1, "x", "x/lesson.toml", &toml, "x/pages.md", &md);
    }

    #[test]
    fn the_parser_never_panics_on_a_mangled_lesson(cut in 0usize..LESSON.len(), len in 0usize..40, junk in "[\\[\\]{}=\"#a-z0-9 \n.,-]{0,12}") {
        let mut s = LESSON.to_string();
        let start = (0..=cut).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        let end = (start + len).min(s.len());
        let end = (end..=s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
        s.replace_range(start..end, &junk);
        match ddlab::lesson::parse_lesson(1, "x", "x/lesson.toml", &s, "x/pages.md", PAGES) {
            Ok(_) => {}
            Err(e) => {
                // every error names the file and a line within it
                prop_assert!(e.file.ends_with("lesson.toml") || e.file.ends_with("pages.md"), "{e}");
                prop_assert!(e.line >= 1 && e.line <= s.lines().count().max(PAGES.lines().count()) + 1, "{e}");
            }
        }
    }
}

#[test]
fn a_check_that_compares_two_runs_names_what_sets_them_apart() {
    let lesson = r#"title = "Two rates"
summary = "one page"
sources = ["nobody, 2026"]

[[page]]
title = "Compare"
experiment = { workers = 2, steps = 60 }

[[page.claim]]
text = "a sensible learning rate learns more than a tiny one"
metric = "test_accuracy"
op = ">"
with = { lr = 0.1 }
than = { lr = 0.001 }
"#;
    let dir = folder(MANIFEST, lesson, "# Compare\n\nTwo rates.\n");
    let out = ddlab()
        .args(["lesson", "--check", "1", "--lessons"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("test_accuracy ="))
        .expect("the figures of the claim");
    // each side names its own setting, and what both share is said once
    assert!(line.contains(" with lr 0.1 > "), "{line}");
    assert!(line.contains(" with lr 0.001 (both: "), "{line}");
    assert!(line.contains("workers 2") && line.contains("steps 60"), "{line}");
    assert_eq!(line.matches("workers 2").count(), 1, "{line}");
}

#[test]
fn a_margin_scales_the_other_run_and_equality_is_exact() {
    let lesson = |factor: &str| {
        format!(
            r#"title = "Margins"
summary = "one page"
sources = ["nobody, 2026"]

[[page]]
title = "Compare"
experiment = {{ workers = 2, steps = 40 }}

[[page.claim]]
text = "threads never change the loss"
metric = "final_loss"
op = "=="
with = {{ threads = 2 }}
than = {{ threads = 1 }}

[[page.claim]]
text = "a run is at least a margin of itself"
metric = "test_accuracy"
op = ">="
factor = {factor}
with = {{}}
than = {{}}
"#
        )
    };
    let check = |factor: &str| {
        let dir = folder(MANIFEST, &lesson(factor), "# Compare\n\nMargins.\n");
        let out = ddlab()
            .args(["lesson", "--check", "1", "--lessons"])
            .arg(dir.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, stdout) = check("0.9");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("✓ lesson 1 page 1: threads never change the loss"),
        "{stdout}"
    );
    assert!(stdout.contains(" ≥ 0.900 × "), "the margin is said: {stdout}");
    // the same run is not 10 % better than itself: the margin is applied, not ignored
    let (code, stdout) = check("1.1");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("✗ lesson 1 page 1: a run is at least a margin"),
        "{stdout}"
    );
    // a margin needs another run, and must be a positive number
    let with_value = lesson("0.5").replace("with = {}\nthan = {}", "value = 0.5");
    let one_page = |l: &str| folder(MANIFEST, l, "# Compare\n\nMargins.\n");
    refused(
        one_page(&with_value).path(),
        &["one/lesson.toml:", "a factor scales another run's figure"],
    );
    refused(
        one_page(&lesson("-1.0")).path(),
        &["one/lesson.toml:", "factor -1 is not a positive number"],
    );
}
