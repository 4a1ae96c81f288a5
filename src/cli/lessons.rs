//! `ddlab lessons` and `ddlab lesson N | --check [N|all]`.

use std::io::IsTerminal;

use super::{flags_of, ExitError, FlagValue, LessonArgs, LessonsArgs};
use crate::lesson::{self, Lesson, ProgressStore};
use crate::session::Experiment;

fn load(dir: Option<&std::path::Path>) -> Result<Vec<Lesson>, ExitError> {
    lesson::load_from(dir).map_err(|e| ExitError::usage(format!("the lessons cannot be read: {e}")))
}

pub fn list(args: &LessonsArgs) -> Result<(), ExitError> {
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

pub fn lesson(args: &LessonArgs) -> Result<(), ExitError> {
    let lessons = load(args.lessons.as_deref())?;
    let pick = |n: usize| -> Result<usize, ExitError> {
        if (1..=lessons.len()).contains(&n) {
            Ok(n)
        } else {
            Err(ExitError::usage(format!(
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
                ExitError::usage(format!("--check {n}: give a lesson number or all"))
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
            Err(ExitError::failure(format!(
                "{failed} lesson check{} failed: the text says something the lab no longer shows",
                if failed == 1 { "" } else { "s" }
            )))
        };
    }
    let n = pick(args.number.ok_or_else(|| {
        ExitError::usage("give a lesson number (`ddlab lessons` lists them), or --check to verify them")
    })?)?;
    if let Some(slow) = args.slow {
        crate::session::Experiment {
            slow,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ExitError::usage(e.to_string()))?;
    }
    if !std::io::stdout().is_terminal() {
        return Err(ExitError::usage(no_terminal(&lessons[n - 1], args.lessons.as_deref())));
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

/// What to do when a lesson is opened without a terminal (`ddlab lesson 3 | cat`): a
/// lesson lives beside the live lab, so point at what works headless — verifying its
/// claims, and its first page's run.
fn no_terminal(lesson: &Lesson, dir: Option<&std::path::Path>) -> String {
    let from = dir.map_or(String::new(), |d| format!(" --lessons {}", d.display()));
    format!(
        "lesson {n} runs beside the live lab and needs a terminal, and stdout is not one: `ddlab lesson --check {n}{from}` verifies its claims headless, and `ddlab run{}` runs its first page's experiment",
        run_flags(&lesson.pages[0].experiment),
        n = lesson.number,
    )
}

/// The flags that set `exp` apart from the default, as ` --flag value` words.
fn run_flags(exp: &Experiment) -> String {
    let defaults = flags_of(&Experiment::default());
    flags_of(exp)
        .into_iter()
        .filter(|f| !defaults.contains(f))
        .map(|(flag, value)| match value {
            FlagValue::Given(v) => format!(" --{flag} {v}"),
            FlagValue::On => format!(" --{flag}"),
            // off where the default is on: no flag says that (none is, today)
            FlagValue::Unset => String::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lesson_without_a_terminal_points_at_its_check_and_its_run() {
        let lessons = lesson::load_from(None).unwrap();
        let msg = no_terminal(&lessons[2], None);
        assert!(msg.contains("needs a terminal"), "{msg}");
        assert!(msg.contains("`ddlab lesson --check 3`"), "{msg}");
        assert!(
            msg.contains("`ddlab run --allreduce naive --hidden 512 --epochs 10 --link 1gbe`"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }
}
