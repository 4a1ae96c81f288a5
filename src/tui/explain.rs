//! "What is happening": the selected worker's current phase in plain words, with the
//! live numbers; in step mode, what is about to happen.
//!
//! Every sentence is true of the state it describes, for every mode, phase and worker
//! count: numbers are named with the step they belong to (the reports of a step arrive
//! when it ends), comparative words are computed from the numbers, and "about to" only
//! says what is known before the phase runs. `tests` checks this over mode × phase × N.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget, Wrap};

use super::lab::Lab;
use super::theme::Theme;
use crate::session::{AllReduceAlgo, Mode, Phase, WorkerStep};

/// The phase that follows `p` in a worker's loop (`gpu`: with the copies between the
/// GPU and the host).
pub fn next_phase(p: Phase, server: bool, gpu: bool) -> Phase {
    match (p, server, gpu) {
        (Phase::Forward, _, _) => Phase::Backward,
        (Phase::Backward, _, true) => Phase::ToHost,
        (Phase::Backward, false, false) | (Phase::ToHost, false, _) => Phase::AllReduce,
        (Phase::AllReduce, _, true) => Phase::ToDevice,
        (Phase::AllReduce, _, false) | (Phase::ToDevice, false, _) => Phase::Update,
        (Phase::Update, _, _) => Phase::Forward,
        (Phase::Backward, true, false) | (Phase::ToHost, true, _) => Phase::Push,
        (Phase::Push, _, _) | (Phase::Wait, _, _) => Phase::Pull,
        (Phase::Pull, _, true) => Phase::ToDevice,
        (Phase::Pull, _, false) | (Phase::ToDevice, true, _) => Phase::Forward,
    }
}

/// The phase after `p` in local SGD: the update follows backward at once (the
/// worker's own gradient), and the averaging all-reduce follows the update of every H-th
/// step (`averages`).
pub fn next_local_phase(p: Phase, averages: bool, gpu: bool) -> Phase {
    match (p, gpu) {
        (Phase::Backward, true) => Phase::ToHost,
        (Phase::ToHost, _) => Phase::ToDevice,
        (Phase::Backward, false) | (Phase::ToDevice, _) => Phase::Update,
        (Phase::Update, _) if averages => Phase::AllReduce,
        (Phase::Forward, _) => Phase::Backward,
        _ => Phase::Forward,
    }
}

/// Everything a sentence may use, gathered once from the lab.
pub struct Facts<'a> {
    pub worker: usize,
    pub workers: usize,
    pub mode: Mode,
    pub algo: AllReduceAlgo,
    pub gpu: bool,
    /// The worker's latest report (of a finished step), if any.
    pub report: Option<&'a WorkerStep>,
    /// The labels of the worker's current batch, as "a 4, a 7 and 30 more".
    pub saw: Option<String>,
    /// Inside the all-reduce of the current step: the rounds done so far.
    pub rounds_done: Option<usize>,
}

impl<'a> Facts<'a> {
    pub fn of(lab: &'a Lab, worker: usize) -> Facts<'a> {
        let state = lab.state();
        let step = lab.last_span_in_segment(worker).map(|s| s.step);
        let rounds_done = step.and_then(|step| {
            let rounds: Vec<u32> = lab
                .view
                .transfers
                .iter()
                .filter(|(s, _)| *s == step)
                .map(|(_, t)| t.round)
                .collect();
            rounds.iter().max().map(|&r| r as usize + 1)
        });
        Facts {
            worker,
            workers: lab.current_workers(),
            mode: lab.current_mode(),
            algo: state.current().map_or(lab.exp.allreduce, |s| s.allreduce),
            gpu: lab.exp.device == crate::session::Device::Gpu,
            report: lab.view.reports.get(worker).and_then(Option::as_ref),
            saw: seen(lab, worker, 3),
            rounds_done,
        }
    }
}

/// The labels of a worker's current batch, as "a 4, a 7 and a 1".
fn seen(lab: &Lab, w: usize, most: usize) -> Option<String> {
    let (_, indices) = lab.view.batches.get(w)?.as_ref()?;
    let labels: Vec<String> = indices
        .iter()
        .take(most)
        .map(|&i| lab.data.train_y[i as usize].to_string())
        .collect();
    let article = |l: &str| if l == "8" { format!("an {l}") } else { format!("a {l}") };
    let mut words: Vec<String> = labels.iter().map(|l| article(l)).collect();
    let last = words.pop()?;
    let more = indices.len().saturating_sub(most);
    Some(if words.is_empty() {
        last
    } else if more > 0 {
        format!("{}, {last} and {more} more", words.join(", "))
    } else {
        format!("{} and {last}", words.join(", "))
    })
}

/// "1 other update", "3 other updates".
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// How the averaged gradient's norm compares with one worker's own, in words computed
/// from the two numbers.
fn compared(reduced: f64, own: f64) -> &'static str {
    if reduced < 0.95 * own {
        "smaller than"
    } else if reduced > 1.05 * own {
        "larger than"
    } else {
        "about the same as"
    }
}

/// One paragraph about `phase` of the worker in `f`: what it does (`about_to`: will do,
/// with only what is known before it runs), and its latest figures, named by their step.
pub fn describe(f: &Facts, phase: Phase, about_to: bool) -> String {
    let (w, n) = (f.worker, f.workers);
    let many = n > 1;
    let last = |what: String| match f.report {
        Some(r) => format!(" (step {}: {what})", r.step),
        None => String::new(),
    };
    let what = match phase {
        Phase::Forward => {
            let batch = f.saw.as_ref().map_or(String::new(), |s| format!(" — {s} —"));
            let scored = last(f.report.map_or(String::new(), |r| format!("loss {:.3}", r.loss)));
            if about_to {
                format!("forward: worker {w} will run its batch{batch} through its copy of the network and score it against the labels: its loss.")
            } else {
                format!("forward: worker {w} runs its batch{batch} through its copy of the network and scores it against the labels: its loss{scored}.")
            }
        }
        Phase::Backward => {
            let differ = if many {
                " The other workers saw other samples, so their gradients differ."
            } else {
                ""
            };
            let norm = if about_to {
                String::new()
            } else {
                last(f.report.map_or(String::new(), |r| format!("its gradient's norm {:.3}", r.grad_norm)))
            };
            format!("backward: worker {w} computes its gradient: how every weight should change to lower its loss{norm}.{differ}")
        }
        Phase::AllReduce if !many => {
            "all-reduce: with one worker there is nothing to average — its gradient goes to the update as it is.".to_string()
        }
        Phase::AllReduce if matches!(f.mode, Mode::Local(_)) => {
            let h = match f.mode {
                Mode::Local(h) => h,
                _ => 1,
            };
            let verb = if about_to { "will average" } else { "average" };
            format!(
                "all-reduce: after {} alone, the {n} workers {verb} their parameters ({} all-reduce), not their gradients. Afterwards the replicas, which drifted apart, are identical again; between averages nothing travels.",
                count(u64::from(h), "step", "steps"),
                f.algo
            )
        }
        Phase::AllReduce => {
            let rounds = f.algo.rounds(n);
            let how = match f.algo {
                AllReduceAlgo::Ring => format!(
                    "ring: {rounds} rounds, each passing 1/{n} of the gradient to the next worker — {} rounds adding up, then {} passing the sums on",
                    n - 1,
                    n - 1
                ),
                AllReduceAlgo::Tree => format!("recursive doubling: {rounds} rounds of swapping with a partner and adding"),
                AllReduceAlgo::Naive => "naive: everyone sends its whole gradient to worker 0, which adds them up and sends the sum back".to_string(),
                AllReduceAlgo::Hierarchical => "hierarchical: add up inside each node, a ring among the node leaders, then back inside each node".to_string(),
                AllReduceAlgo::TwoD => "2d: add up each shard inside the node, across the nodes, then gather inside the node".to_string(),
                AllReduceAlgo::Mpi => "the MPI library's own all-reduce".to_string(),
            };
            let at = match (about_to, f.rounds_done) {
                (true, Some(done)) if done < rounds => format!(" Next: round {} of {rounds}.", done + 1),
                (false, Some(done)) => format!(" Round {} of {rounds} is done.", done.min(rounds)),
                _ => String::new(),
            };
            let numbers = match f.report.filter(|_| !about_to) {
                Some(r) => format!(
                    " At step {}, the mean's norm was {:.3}, {} worker {w}'s own {:.3}{}.",
                    r.step,
                    r.grad_norm_reduced,
                    compared(r.grad_norm_reduced, r.grad_norm),
                    r.grad_norm,
                    if r.grad_norm_reduced < 0.95 * r.grad_norm {
                        ": averaging cancels part of the workers' noise"
                    } else {
                        ""
                    }
                ),
                None => String::new(),
            };
            let verb = if about_to { "will average" } else { "average" };
            format!(
                "all-reduce: the {n} workers {verb} their gradients ({how}). Afterwards every worker holds the same mean gradient.{at}{numbers}"
            )
        }
        Phase::Update => {
            let lr = f.report.map_or(String::new(), |r| format!(" with learning rate {}", r.lr));
            if many && matches!(f.mode, Mode::Local(_)) {
                format!("update: worker {w} steps its own replica against its own gradient{lr}: local SGD, so the {n} replicas drift apart until the next averaging.")
            } else if many {
                format!("update: every worker applies the same averaged gradient{lr}, so the {n} replicas stay identical, bit for bit.")
            } else {
                format!("update: worker {w} steps its weights against its gradient{lr}.")
            }
        }
        Phase::Pull => {
            let why = match f.mode {
                Mode::Ssp(k) => format!(
                    " It is at most {} ahead of the slowest worker (SSP's bound).",
                    count(u64::from(k), "iteration", "iterations")
                ),
                Mode::Backup(b) => format!(
                    " Its gradient will count for this step only if it is among the first {} of {n} to arrive.",
                    n.saturating_sub(b)
                ),
                _ if many => " It computes on them while the others push, so its gradient will be stale when it arrives.".to_string(),
                _ => String::new(),
            };
            let verb = if about_to { "will fetch" } else { "fetches" };
            format!("pull: worker {w} {verb} the current parameters from the server.{why}")
        }
        Phase::Push => {
            let verb = if about_to { "will send" } else { "sends" };
            let staleness = match f.report.filter(|_| !about_to).and_then(|r| r.staleness.map(|s| (r, s))) {
                Some((r, s)) if many => format!(
                    " At step {}, {} landed between its pull and its push (staleness {s}).",
                    r.step,
                    count(s, "other update", "other updates")
                ),
                _ => String::new(),
            };
            match f.mode {
                Mode::Backup(b) => {
                    let dropped = match f.report.filter(|_| !about_to) {
                        Some(r) if r.dropped => format!(" At step {}, its gradient came too late and was dropped.", r.step),
                        _ => String::new(),
                    };
                    let needed = n.saturating_sub(b);
                    format!(
                        "push: worker {w} {verb} its gradient; the server adds it to the step's sum, applies the mean once {needed} of the {n} gradients {} in, and drops the ones that come later.{dropped}",
                        if needed == 1 { "is" } else { "are" }
                    )
                }
                Mode::Ssp(k) => format!(
                    "push: worker {w} {verb} its gradient; the server applies it at once. Before its next pull it may have to wait: no worker may be more than {} ahead of the slowest.{staleness}",
                    count(u64::from(k), "iteration", "iterations")
                ),
                _ => format!("push: worker {w} {verb} its gradient; the server applies it at once.{staleness}"),
            }
        }
        Phase::Wait => match f.mode {
            Mode::Ssp(k) => format!(
                "wait: worker {w} is {} ahead of the slowest worker and waits for it: SSP's bound keeps its gradients from getting staler.",
                count(u64::from(k), "iteration", "iterations")
            ),
            Mode::Backup(b) => format!(
                "wait: worker {w}'s gradient is in, and it waits for the step to close ({} of the {n} gradients), the price of synchronous steps.",
                n.saturating_sub(b)
            ),
            _ => format!("wait: worker {w} waits for the server."),
        },
        Phase::ToHost => {
            let why = if many {
                "this all-reduce runs on the host. A GPU-aware library (NCCL) would send it from GPU memory directly and skip both copies."
            } else {
                "the update's gradient goes through the host in this design (with one worker there is nothing to all-reduce: the copies are its price)."
            };
            let verb = if about_to { "will be copied" } else { "is copied" };
            format!("to host: worker {w}'s gradient {verb} from its GPU into host memory, because {why}")
        }
        Phase::ToDevice => {
            let server = f.mode.uses_server();
            let what = match (server, many) {
                (true, _) => "the parameters it pulled",
                (false, true) => "the averaged gradient",
                (false, false) => "its gradient",
            };
            let verb = if about_to { "will copy" } else { "copies" };
            format!("to device: worker {w} {verb} {what} back into its GPU's memory, where the kernels can use it.")
        }
    };
    what
}

pub fn render(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let w = lab.selected.min(lab.current_workers().saturating_sub(1));
    let server = lab.current_mode().uses_server();
    let facts = Facts::of(lab, w);
    // What comes next follows from the current segment's spans only (a run just
    // switched from async to sync is about to start its first sync phase, not to pull);
    // what just happened is the last span, whichever segment it was in.
    let held = lab.paused || lab.stepping;
    let last = if held {
        lab.last_span_in_segment(w)
    } else {
        lab.view.last_span(w)
    };
    let text = match (lab.ended(), last) {
        (Some(why), _) => why,
        (None, Some(span)) if lab.paused || lab.stepping => {
            // Inside the all-reduce, the next thing may be another round of it.
            let rounds = facts.algo.rounds(facts.workers);
            let next = match (span.phase, facts.rounds_done, facts.mode) {
                (Phase::AllReduce, Some(done), _) if done < rounds => Phase::AllReduce,
                (p, _, Mode::Local(h)) => {
                    // (the segment's steps count from its first update)
                    let first = lab.state().current().map_or(0, |seg| seg.update);
                    let averages = (span.step.saturating_sub(first) + 1).is_multiple_of(u64::from(h.max(1)));
                    next_local_phase(p, averages, facts.gpu)
                }
                (p, _, _) => next_phase(p, server, facts.gpu),
            };
            format!("halted. About to: {}", describe(&facts, next, true))
        }
        (None, Some(span)) => describe(&facts, span.phase, false),
        (None, None) if lab.paused || lab.stepping => {
            let first = if server { Phase::Pull } else { Phase::Forward };
            format!(
                "halted before the first phase: n steps one phase at a time, space runs. About to: {}",
                describe(&facts, first, true)
            )
        }
        (None, None) => "starting…".into(),
    };
    Paragraph::new(Line::from(text))
        .wrap(Wrap { trim: true })
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(Span::styled(format!(" what is happening · worker {w} "), theme.title())),
        )
        .render(area, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sgd_updates_after_backward_and_averages_only_after_an_h_th_update() {
        let walk = |averages: bool, gpu: bool| {
            let mut p = Phase::Forward;
            let mut seen = vec![p];
            for _ in 0..6 {
                p = next_local_phase(p, averages, gpu);
                seen.push(p);
                if p == Phase::Forward {
                    break;
                }
            }
            seen
        };
        use Phase::*;
        assert_eq!(walk(false, false), vec![Forward, Backward, Update, Forward]);
        assert_eq!(walk(true, false), vec![Forward, Backward, Update, AllReduce, Forward]);
        assert_eq!(
            walk(true, true),
            vec![Forward, Backward, ToHost, ToDevice, Update, AllReduce, Forward]
        );
    }

    fn report(loss: f64, own: f64, reduced: f64, staleness: Option<u64>, dropped: bool) -> WorkerStep {
        WorkerStep {
            worker: 0,
            step: 41,
            iteration: 41,
            epoch: 0,
            loss,
            correct: 10,
            samples: 32,
            grad_norm: own,
            grad_norm_reduced: reduced,
            lr: 0.1,
            phase_ns: [0; Phase::COUNT],
            bytes_sent: 0,
            idle_ns: 0,
            staleness,
            dropped,
            lead: 0,
            allreduce_start_ns: 0,
            replica_hash: None,
            end_ns: 0,
        }
    }

    /// Every mode × phase × worker count × (happening, about to): each sentence checked
    /// against the state it describes.
    #[test]
    fn every_sentence_is_true_for_every_mode_phase_and_worker_count() {
        let modes = [Mode::Sync, Mode::Async, Mode::Ssp(1), Mode::Ssp(2), Mode::Backup(1)];
        for mode in modes {
            for n in [1usize, 2, 4] {
                if matches!(mode, Mode::Backup(b) if b >= n) {
                    continue; // (refused as a setting)
                }
                for gpu in [false, true] {
                    for (own, reduced) in [(0.4, 0.2), (0.2, 0.4), (0.3, 0.3)] {
                        let r = report(2.436, own, reduced, mode.uses_server().then_some(1), false);
                        for about_to in [false, true] {
                            for phase in Phase::ALL {
                                let server_phase = matches!(phase, Phase::Pull | Phase::Push | Phase::Wait);
                                if server_phase != mode.uses_server() && phase != Phase::Wait
                                    || phase == Phase::AllReduce && mode.uses_server()
                                    || matches!(phase, Phase::ToHost | Phase::ToDevice) && !gpu
                                    || phase == Phase::Update && mode.uses_server()
                                    || phase == Phase::Wait && !matches!(mode, Mode::Ssp(_) | Mode::Backup(_))
                                {
                                    continue;
                                }
                                let f = Facts {
                                    worker: 0,
                                    workers: n,
                                    mode,
                                    algo: AllReduceAlgo::Ring,
                                    gpu,
                                    report: Some(&r),
                                    saw: Some("a 4, a 7 and 30 more".into()),
                                    rounds_done: None,
                                };
                                let s = describe(&f, phase, about_to);
                                let case = format!("{mode} N={n} {phase:?} about_to={about_to} ({own}→{reduced}): {s}");
                                // No plural for one, no phantom partners.
                                assert!(!s.contains("1 workers") && !s.contains("the 1 "), "{case}");
                                assert!(!s.contains(" 0 rounds"), "{case}");
                                if n == 1 {
                                    assert!(!s.contains("other workers") && !s.contains("others"), "{case}");
                                    assert!(!s.contains("replicas"), "{case}");
                                }
                                // "About to" says nothing measured: a phase that has not run
                                // has no figures, and the last step's are not its result.
                                if about_to {
                                    for figure in ["2.436", "0.200", "0.400", "0.300", "staleness 1"] {
                                        assert!(!s.contains(figure), "{case}");
                                    }
                                } else if phase == Phase::Forward {
                                    assert!(s.contains("(step 41: loss 2.436)"), "{case}");
                                }
                                // Comparative words follow the numbers.
                                if phase == Phase::AllReduce && n > 1 && !about_to {
                                    let word = if reduced < own {
                                        "smaller than"
                                    } else if reduced > own {
                                        "larger than"
                                    } else {
                                        "about the same as"
                                    };
                                    assert!(s.contains(word), "{case}");
                                    assert_eq!(s.contains("cancels"), reduced < own, "{case}");
                                }
                                // The server applies at once only where it does.
                                if phase == Phase::Push {
                                    assert_eq!(
                                        s.contains("applies it at once"),
                                        !matches!(mode, Mode::Backup(_)),
                                        "{case}"
                                    );
                                    if !about_to && n > 1 && !matches!(mode, Mode::Backup(_)) {
                                        assert!(s.contains("1 other update landed"), "{case}");
                                    }
                                }
                                if let Mode::Ssp(k) = mode {
                                    if phase == Phase::Wait {
                                        let bound = if k == 1 { "1 iteration " } else { "iterations" };
                                        assert!(s.contains(bound), "{case}");
                                    }
                                }
                                if let Mode::Backup(b) = mode {
                                    if phase == Phase::Push || phase == Phase::Wait {
                                        assert!(s.contains(&format!("{} of the {n} gradients", n - b)), "{case}");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn inside_the_all_reduce_the_next_thing_is_the_next_round() {
        let r = report(1.0, 0.4, 0.2, None, false);
        let f = Facts {
            worker: 1,
            workers: 4,
            mode: Mode::Sync,
            algo: AllReduceAlgo::Ring,
            gpu: false,
            report: Some(&r),
            saw: None,
            rounds_done: Some(2),
        };
        let s = describe(&f, Phase::AllReduce, true);
        assert!(s.contains("Next: round 3 of 6"), "{s}");
        assert!(s.contains("3 rounds adding up, then 3 passing the sums on"), "{s}");
    }
}
