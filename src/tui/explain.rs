//! "What is happening": the current phase in plain words, with the live numbers.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget, Wrap};

use super::app::Lab;
use super::theme::Theme;
use crate::comm::AllReduceAlgo;
use crate::train::Phase;

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

/// One paragraph about the phase `phase` of worker `w`.
pub fn describe(lab: &Lab, w: usize, phase: Phase) -> String {
    let n = lab.current_workers();
    let report = lab.view.reports.get(w).and_then(|r| r.as_ref());
    let saw = seen(lab, w, 3).unwrap_or_else(|| "its samples".into());
    let norm = report.map_or("…".into(), |r| format!("{:.3}", r.grad_norm));
    let reduced = report.map_or("…".into(), |r| format!("{:.3}", r.grad_norm_reduced));
    let lr = report.map_or(lab.exp.lr, |r| r.lr);
    let algo = lab.state().current().map_or(lab.exp.allreduce, |s| s.allreduce);
    let server = lab.current_mode().uses_server();
    match phase {
        Phase::Forward => format!(
            "forward: worker {w} runs its own batch through its copy of the network — it saw {saw} — and scores it: loss {}.",
            report.map_or("…".into(), |r| format!("{:.3}", r.loss))
        ),
        Phase::Backward => format!(
            "backward: worker {w} computes how every weight should change to lower its loss: its gradient, norm {norm}. The other workers saw other samples, so their gradients differ."
        ),
        Phase::AllReduce => format!(
            "all-reduce: the {n} workers average their gradients ({algo}: {} rounds{}). Afterwards every worker holds the same mean gradient, norm {reduced} — smaller than one worker's {norm}, because averaging cancels noise.",
            algo.rounds(n),
            if algo == AllReduceAlgo::Ring { ", each passing 1/N of the gradient to its neighbour" } else { "" }
        ),
        Phase::Update => format!(
            "update: every worker applies the same averaged gradient with learning rate {lr}, so the {n} replicas stay identical, bit for bit."
        ),
        Phase::Pull => format!(
            "pull: worker {w} fetches the current parameters from the server. It will compute on them while others push, so its gradient will be stale when it arrives."
        ),
        Phase::Push => format!(
            "push: worker {w} sends its gradient (norm {norm}); the server applies it at once{}.",
            report.and_then(|r| r.staleness).map_or(String::new(), |s| format!(" — {s} other updates landed since it pulled (staleness {s})"))
        ),
        Phase::Wait => format!(
            "wait: worker {w} is ahead of the slowest worker (or its step has not closed) and waits — the price SSP and backup workers pay for fresher gradients."
        ),
        Phase::ToHost => format!(
            "to host: worker {w}'s gradient (norm {norm}) is copied from its GPU into host memory, because this all-reduce runs on the host. A GPU-aware library (NCCL) would send it from GPU memory directly and skip both copies."
        ),
        Phase::ToDevice => format!(
            "to device: worker {w} copies {} back into its GPU's memory, where the kernels can use {}.",
            if server { "the parameters it pulled" } else { "the averaged gradient" },
            if server { "them" } else { "it" }
        ),
    }
}

pub fn render(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let w = lab.selected.min(lab.current_workers().saturating_sub(1));
    let server = lab.current_mode().uses_server();
    let text = match (lab.diverged_at(), lab.view.last_span(w)) {
        (Some(step), _) => format!(
            "DIVERGED at step {step}: the loss became NaN, infinite or absurdly large. The learning rate ({}) is too high for this setup — with {} workers, try r (LR rule) or a smaller --lr, then R to restart.",
            lab.exp.lr,
            lab.current_workers()
        ),
        (None, Some(span)) if lab.paused || lab.stepping => {
            let next = next_phase(span.phase, server, lab.exp.device == crate::gpu::Device::Gpu);
            format!("halted. About to: {}", describe(lab, w, next))
        }
        (None, Some(span)) => describe(lab, w, span.phase),
        (None, None) if lab.is_finished() => "the run has finished: R restarts it, c keeps its curves as a ghost.".into(),
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
