//! The `ddlab` binary: parse, dispatch, turn failures into one sentence and an exit code.

use ddlab::cli::{self, Command};
use ddlab::tui;

fn main() {
    let result = cli::parse().and_then(|cli| match cli.command {
        Some(Command::Run(args)) => cli::run::run(&args),
        Some(Command::Compare(args)) => cli::compare::compare(&args),
        Some(Command::Bench(args)) => cli::bench::bench(&args),
        Some(Command::Check(args)) => cli::check::check(&args),
        Some(Command::Lessons(args)) => cli::lessons::list(&args),
        Some(Command::Lesson(args)) => cli::lessons::lesson(&args),
        Some(Command::Worker(args)) => cli::worker::worker(&args),
        Some(Command::Lab(args)) => tui::run(tui::Start::Lab(args.setup())),
        None => tui::run(tui::Start::Home(ddlab::config::Experiment::default())),
    });
    if let Err(e) = result {
        if !e.message.is_empty() {
            eprintln!("ddlab: {}", e.message);
        }
        std::process::exit(e.code);
    }
}
