//! The `ddlab` binary: parse, dispatch, turn failures into one sentence and an exit code.

use ddlab::cli::{self, Command};
use ddlab::tui;

fn main() {
    // ddlab picks its GPUs itself. Mesa's implicit Vulkan layer that would pick one for
    // it connects to a Wayland display to do so, and on a machine without one prints
    // "XDG_RUNTIME_DIR is invalid" to the terminal: leave that layer out unless the user
    // set it up. (Set here, before any thread exists.)
    #[cfg(feature = "gpu")]
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    let result = cli::parse().and_then(|cli| match cli.command {
        Some(Command::Run(args)) => cli::run::run(&args),
        Some(Command::Compare(args)) => cli::compare::compare(&args),
        Some(Command::Bench(args)) => cli::bench::bench(&args),
        Some(Command::Check(args)) => cli::check::check(&args),
        Some(Command::Lessons(args)) => cli::lessons::list(&args),
        Some(Command::Lesson(args)) => cli::lessons::lesson(&args),
        Some(Command::Worker(args)) => cli::worker::worker(&args),
        Some(Command::Lab(args)) => args.setup().and_then(|exp| {
            tui::run(tui::Start::Lab {
                exp,
                paused: args.paused,
            })
        }),
        None => tui::run(tui::Start::Home(ddlab::config::Experiment::default())),
    });
    if let Err(e) = result {
        if !e.message.is_empty() {
            ddlab::session::spmd::say(&e.message);
        }
        std::process::exit(e.code);
    }
}
