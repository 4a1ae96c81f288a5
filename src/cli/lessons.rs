//! `ddlab lessons` and `ddlab lesson N | --check [N|all]`.

use super::{CliError, LessonArgs, LessonsArgs};
use crate::lesson::{self, Lesson, ProgressStore};

fn load(dir: Option<&std::path::Path>) -> Result<Vec<Lesson>, CliError> {
    lesson::load_from(dir).map_err(|e| CliError::usage(format!("the lessons cannot be read: {e}")))
}

pub fn list(args: &LessonsArgs) -> Result<(), CliError> {
    let lessons = load(args.lessons.as_deref())?;
    let store = ProgressStore::open_default();
    if let Some(w) = &store.warning {
        eprintln!("ddlab: {w}");
    }
    for l in &lessons {
        let progress = store.progress.lessons.get(&l.id);
        let mark = match progress {
            Some(p) if p.completed => "✓".to_string(),
            Some(p) => format!("page {}/{}", p.page + 1, l.pages.len()),
            None => String::new(),
        };
        say!("{:>2}. {:<30} {:<10} {}", l.number, l.title, mark, l.summary);
    }
    say!("\nOpen one with `ddlab lesson N`; `ddlab lesson --check all` verifies them headless.");
    Ok(())
}

pub fn lesson(args: &LessonArgs) -> Result<(), CliError> {
    let lessons = load(args.lessons.as_deref())?;
    let pick = |n: usize| -> Result<usize, CliError> {
        if (1..=lessons.len()).contains(&n) {
            Ok(n)
        } else {
            Err(CliError::usage(format!(
                "there is no lesson {n}: choose 1 to {} (`ddlab lessons` lists them)",
                lessons.len()
            )))
        }
    };
    if let Some(which) = &args.check {
        let only = match (which.as_str(), args.number) {
            ("all", Some(n)) => Some(pick(n)?),
            ("all", None) => None,
            (n, _) => Some(pick(n.parse().map_err(|_| {
                CliError::usage(format!("--check {n}: give a lesson number or all"))
            })?)?),
        };
        let (mut passed, mut failed) = (0, 0);
        let ok = lesson::check_lessons(&lessons, only, |line| {
            if line.passed {
                passed += 1;
            } else {
                failed += 1;
            }
            say!(
                "{} lesson {} page {}: {}\n    {}",
                if line.passed { "✓" } else { "✗" },
                line.lesson,
                line.page,
                line.text,
                line.detail
            );
        });
        say!("{passed} held, {failed} failed");
        return if ok {
            Ok(())
        } else {
            Err(CliError::failure(format!(
                "{failed} lesson check{} failed: the text says something the lab no longer shows",
                if failed == 1 { "" } else { "s" }
            )))
        };
    }
    let n = pick(args.number.ok_or_else(|| {
        CliError::usage("give a lesson number (`ddlab lessons` lists them), or --check to verify them")
    })?)?;
    if let Some(slow) = args.slow {
        crate::config::Experiment {
            slow,
            ..Default::default()
        }
        .validate()
        .map_err(|e| CliError::usage(e.to_string()))?;
    }
    crate::tui::run(crate::tui::Start::Lesson {
        lessons,
        number: n,
        dir: args.lessons.clone(),
        opening: crate::tui::Opening {
            paused: args.paused,
            slow: args.slow,
        },
    })
}
