//! `ddlab check`: the cluster sanity check. Standalone it checks N threads of this
//! machine; under `mpirun` (feature `mpi`) it checks the ranks, one per process.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::ExitError;
use crate::check::{self, CheckOptions, CheckReport, Fault, RankReport};
use crate::comm::{thread_group, Clock};
use crate::session::{AllReduceAlgo, Backend, Dataset, DatasetKind, Session, SessionOptions};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Threads to check (standalone); under mpirun the ranks are the workers.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// threads, or mpi (the default under mpirun when built with --features mpi).
    #[arg(long, value_name = "threads|mpi")]
    pub backend: Option<Backend>,
    /// All-reduce sizes, e.g. 4,64K,1M,64M (default 4 B to 64 MB by 16×).
    #[arg(long, value_name = "SIZES", value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Option<Vec<usize>>,
    /// Sizes up to 4 MB and fewer repetitions: under 10 s on 2 ranks.
    #[arg(long)]
    pub quick: bool,
    /// Write every figure as one JSON object.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Inject a fault to see the check catch it: corrupt:RANK or slow:RANK.
    #[arg(long, value_name = "FAULT", hide = true)]
    pub inject: Option<Fault>,
}

/// `4`, `64K`, `1M`, `64MB`, `2G`: bytes.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1usize << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use bytes such as 4, 64K, 1M or 64M"))?;
    let bytes = n.checked_mul(mult).filter(|&b| (4..=1 << 30).contains(&b));
    bytes.ok_or_else(|| format!("'{s}' is out of range: use 4 bytes to 1G"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

fn options(args: &CheckArgs, mpi: bool) -> CheckOptions {
    let mut algorithms = AllReduceAlgo::FLAT.to_vec();
    if mpi {
        algorithms.push(AllReduceAlgo::Mpi);
    }
    CheckOptions {
        sizes: args
            .sizes
            .clone()
            .unwrap_or_else(|| CheckOptions::default_sizes(args.quick)),
        algorithms,
        link_bytes: if args.quick { 1 << 20 } else { 4 << 20 },
        train_steps: if args.quick { 20 } else { 60 },
        quick: args.quick,
        fault: args.inject,
    }
}

/// The engine's own one-worker run with the N-times batch: what the ranks must equal.
fn reference(n: usize, opts: &CheckOptions, data: Arc<Dataset>) -> Result<Vec<f32>, ExitError> {
    let mut exp = check::train_experiment(n, opts);
    exp.batch *= n;
    exp.workers = 1;
    let mut session = Session::start_with_data(exp, data, SessionOptions::default(), None)
        .map_err(|e| ExitError::failure(format!("the one-rank reference run could not start: {e}")))?;
    session.run_to_end(|_| {});
    session
        .final_params()
        .ok_or_else(|| ExitError::failure("the one-rank reference run left no parameters"))
}

fn finish(report: &CheckReport, args: &CheckArgs) -> Result<(), ExitError> {
    say!("{}", check::render(report, args.quick).trim_end());
    if let Some(path) = &args.json {
        let file = super::create_output("json", path)?;
        serde_json::to_writer_pretty(file, report)
            .map_err(|e| ExitError::failure(format!("--json: writing failed: {e}")))?;
    }
    if report.passed {
        Ok(())
    } else {
        Err(ExitError::failure("the check failed (see the ✗ lines above)"))
    }
}

pub fn check(args: &CheckArgs) -> Result<(), ExitError> {
    let under_launcher = crate::session::spmd::launched_by_mpirun();
    let backend = args.backend.unwrap_or(if under_launcher && cfg!(feature = "mpi") {
        Backend::Mpi
    } else {
        Backend::Threads
    });
    if let Some(Fault::Corrupt(r) | Fault::Slow(r)) = args.inject {
        if r >= crate::session::MAX_WORKERS {
            return Err(ExitError::usage(format!("--inject: there is no rank {r}")));
        }
    }
    match backend {
        Backend::Mpi => check_mpi(args),
        Backend::Threads => {
            if under_launcher {
                return Err(ExitError::usage(if cfg!(feature = "mpi") {
                    "--backend threads checks this machine's threads, not the ranks mpirun started: run `ddlab check` without mpirun for the threads, or drop --backend threads to check the ranks"
                } else {
                    "ddlab check runs under mpirun but this ddlab was built without MPI: rebuild with `cargo build --release --features mpi`, or run `ddlab check` without mpirun to check this machine's threads"
                }));
            }
            check_threads(args)
        }
    }
}

/// Whether the launcher was given a list of hosts: an environment setting, or a hostfile
/// flag on the command line of the process that started us (mpirun, or its proxy's
/// parent under MPICH's hydra).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn hostfile_given() -> bool {
    const FLAGS: [&str; 6] = [
        "--hostfile",
        "-hostfile",
        "--machinefile",
        "-machinefile",
        "-f",
        "--default-hostfile",
    ];
    if std::env::vars().any(|(k, v)| k.to_ascii_lowercase().contains("hostfile") && !v.is_empty()) {
        return true;
    }
    let mut pid = std::process::id();
    for _ in 0..3 {
        let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        }) else {
            return false;
        };
        let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).any(|arg| {
            FLAGS
                .iter()
                .any(|f| arg == f.as_bytes() || arg.starts_with(format!("{f}=").as_bytes()))
        }) {
            return true;
        }
        pid = ppid;
    }
    false
}

fn check_threads(args: &CheckArgs) -> Result<(), ExitError> {
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    let n = args.workers.unwrap_or(cores.clamp(2, 8));
    if n == 0 || n > 64 {
        return Err(ExitError::usage(format!(
            "--workers {n} is not allowed: check 1 to 64 threads"
        )));
    }
    let opts = options(args, false);
    if let Some(Fault::Corrupt(r) | Fault::Slow(r)) = opts.fault {
        if r >= n {
            return Err(ExitError::usage(format!("--inject: there is no rank {r} among {n}")));
        }
    }
    let data = Arc::new(Dataset::load(DatasetKind::Digits).map_err(|e| ExitError::failure(e.to_string()))?);
    let host = hostname();
    // (other programs busy beside the check lower every figure: it says so)
    let others = crate::comm::OthersMeter::start();
    let group = thread_group(n, Clock::start(), None, false);
    let reports: Vec<Result<RankReport, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|mut t| {
                let (opts, host, data) = (&opts, host.clone(), &data);
                s.spawn(move || {
                    let abort = t.abort_handle();
                    let out = check::run_rank(&mut t, opts, host, data).map_err(|e| e.to_string());
                    if out.is_err() {
                        abort.abort();
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a checking thread panicked".into())))
            .collect()
    });
    let reports: Vec<RankReport> = reports
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| ExitError::failure(format!("the check could not finish: {e}")))?;
    let reference = reference(n, &opts, data)?;
    let mut report = check::judge("threads", &reports, &reference, opts.link_bytes, false, false);
    if let Some(cores) = others.cores().filter(|&c| c >= 0.5) {
        report.warnings.push(format!(
            "other programs used {cores:.1} cores of this machine while it was checked: the bandwidth and timings are lower than it can reach; check again when it is quiet"
        ));
    }
    finish(&report, args)
}

#[cfg(not(feature = "mpi"))]
fn check_mpi(_args: &CheckArgs) -> Result<(), ExitError> {
    Err(ExitError::usage(
        "this ddlab was built without MPI: rebuild with `cargo build --release --features mpi` (Debian/Ubuntu: apt-get install libopenmpi-dev openmpi-bin libclang-dev), or use --backend threads",
    ))
}

/// Every rank checks itself; rank 0 judges and prints, and all leave with its verdict.
/// The rank's life (MPI at `THREAD_SINGLE`: every call from this thread, as a plain
/// `MPI_Init` program times them; the abort on a panic; agreeing that every rank was
/// given the same check and could load what it needs) is `session::spmd`'s.
#[cfg(feature = "mpi")]
fn check_mpi(args: &CheckArgs) -> Result<(), ExitError> {
    use crate::session::spmd::{self, exit, Rank};

    let mut rank = Rank::start(false).map_err(ExitError::failure)?;
    // A rank that waits too long in a collective names whom it waits for and ends the job.
    // (rank 0 writes nothing on the way out: every rank leaves at once)
    rank.watch_for_stalls(None, |stall| {
        spmd::leave_stalled(&spmd::Stall {
            rank_0_may_end_it: false,
            ..stall
        });
    });
    let n = rank.size;
    let opts = options(args, true);
    let refused = |_| ExitError {
        code: exit::BAD_INPUT,
        message: String::new(), // (rank 0 has said it)
    };
    // The same check on every rank (sizes that differ would make the ranks disagree on
    // the very messages they exchange).
    let given = serde_json::json!({
        "sizes": opts.sizes,
        "quick": opts.quick,
        "inject": opts.fault.map(|f| format!("{f:?}")),
    });
    rank.same_everywhere("check", &given).map_err(refused)?;
    let data = Dataset::load(DatasetKind::Digits)
        .map(Arc::new)
        .map_err(|e| e.to_string());
    rank.agree(data.as_ref().map(|_| ()).map_err(Clone::clone))
        .map_err(refused)?;
    let data = data.expect("every rank agreed it has the data");
    let mut t = rank.transport(Clock::start());
    let report = check::run_rank(&mut t, &opts, rank.host.clone(), &data)
        .map_err(|e| format!("the check could not finish: {e}"));
    rank.agree(report.as_ref().map(|_| ()).map_err(Clone::clone))
        .map_err(|_| ExitError {
            code: exit::FAILED,
            message: String::new(),
        })?;
    let report = report.expect("every rank agreed it finished");
    let bytes = serde_json::to_vec(&report).map_err(|e| ExitError::failure(e.to_string()))?;
    let gathered = t.gather_bytes(&bytes);
    let mut verdict = vec![0u8];
    let mut result = Ok(());
    if let Some(all) = gathered {
        let reports: Vec<RankReport> = all
            .iter()
            .map(|b| serde_json::from_slice(b))
            .collect::<Result<_, _>>()
            .map_err(|e| ExitError::failure(format!("a rank's report was unreadable: {e}")))?;
        let reference = reference(n, &opts, data)?;
        let hostfile = hostfile_given();
        let report = check::judge("mpi", &reports, &reference, opts.link_bytes, true, hostfile);
        result = finish(&report, args);
        verdict[0] = u8::from(result.is_ok());
    }
    // Everyone leaves with rank 0's verdict.
    t.broadcast_bytes(&mut verdict, 0);
    if rank.rank == 0 {
        result
    } else if verdict[0] == 1 {
        Ok(())
    } else {
        Err(ExitError {
            code: exit::FAILED,
            message: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_size("4"), Ok(4));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert!(parse_size("0").unwrap_err().contains("out of range"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
    }
}
