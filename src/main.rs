//! The `ddlab` binary: parse, dispatch, turn failures into one sentence and an exit code.

use ddlab::cli::{self, CliError, Command};

fn main() {
    let result = cli::parse().and_then(|cli| match cli.command {
        Some(Command::Run(args)) => cli::run::run(&args),
        Some(Command::Bench(args)) => cli::bench::bench(&args),
        Some(Command::Compare(args)) => cli::compare::compare(&args),
        None => Err(CliError::usage(
            "the lab's screen is not built yet: try `ddlab run` (a headless run) or `ddlab --help`",
        )),
    });
    if let Err(e) = result {
        eprintln!("ddlab: {}", e.message);
        std::process::exit(e.code);
    }
}
