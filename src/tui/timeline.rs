//! The per-worker timeline: the last few steps of every worker as coloured phase blocks,
//! so that a straggler, and everyone waiting for it, shows at a glance.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span as TextSpan};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};

use super::lab::{Lab, Span};
use super::theme::Theme;
use crate::session::Phase;

/// Phases of worker 0 the window spans (about three steps).
const WINDOW_PHASES: usize = 12;

/// The time window shown: from a few phases back to the latest event.
pub fn window(lab: &Lab) -> (u64, u64) {
    let end = lab.view.now_ns;
    let start = lab
        .view
        .spans
        .iter()
        .filter_map(|s| s.len().checked_sub(WINDOW_PHASES).and_then(|i| s.get(i)).or(s.front()))
        .map(|s| s.start_ns)
        .min()
        .unwrap_or(end);
    (start.min(end.saturating_sub(1_000)), end)
}

/// Stretches of the window in which no worker was in any phase for longer than this
/// are cut out: the time a person took between two presses of "step" (or a pause) is
/// not part of the run, and would leave the phases as dots in a blank line.
const CUT_GAPS_OVER_NS: u64 = 5_000_000;

/// The run's time in `[t0, t1)` with long idle gaps cut out: the pieces kept, as real
/// intervals in order.
pub fn kept_time(spans: &[std::collections::VecDeque<Span>], t0: u64, t1: u64) -> Vec<(u64, u64)> {
    let mut busy: Vec<(u64, u64)> = spans
        .iter()
        .flatten()
        .filter(|s| s.end_ns > t0 && s.start_ns < t1)
        .map(|s| (s.start_ns.max(t0), s.end_ns.min(t1)))
        .collect();
    busy.sort_unstable();
    let mut kept: Vec<(u64, u64)> = Vec::new();
    for (a, b) in busy {
        match kept.last_mut() {
            Some(last) if a <= last.1 + CUT_GAPS_OVER_NS => last.1 = last.1.max(b),
            Some(_) => kept.push((a, b)),
            None if a <= t0 + CUT_GAPS_OVER_NS => kept.push((t0, b)),
            None => kept.push((a, b)),
        }
    }
    if let Some(last) = kept.last_mut() {
        if t1 <= last.1 + CUT_GAPS_OVER_NS {
            last.1 = t1;
        }
    } else {
        kept.push((t0, t1));
    }
    kept
}

/// The real interval `[a, b)` of the kept time that starts `from` ns into it and is `len`
/// long, in pieces (it may straddle a cut).
fn real_pieces(kept: &[(u64, u64)], from: u64, len: u64) -> Vec<(u64, u64)> {
    let (mut skip, mut want, mut out) = (from, len, Vec::new());
    for &(a, b) in kept {
        let n = b - a;
        if skip >= n {
            skip -= n;
            continue;
        }
        let start = a + skip;
        let take = (b - start).min(want);
        out.push((start, start + take));
        want -= take;
        skip = 0;
        if want == 0 {
            break;
        }
    }
    out
}

/// The phase that covers most of the real pieces `cell` in `spans`.
fn dominant(spans: &std::collections::VecDeque<Span>, cell: &[(u64, u64)]) -> Option<Phase> {
    let mut best = (0u64, None);
    let t0 = cell.first()?.0;
    // Spans are in time order; walk back from the end while they can overlap.
    for s in spans.iter().rev() {
        if s.end_ns <= t0 {
            break;
        }
        let overlap: u64 = cell
            .iter()
            .map(|&(a, b)| s.end_ns.min(b).saturating_sub(s.start_ns.max(a)))
            .sum();
        if overlap > best.0 {
            best = (overlap, Some(s.phase));
        }
    }
    best.1
}

pub fn render(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let (t0, t1) = window(lab);
    // Only a halted run has gaps that are a person's time (running, a gap is detail
    // the lab dropped to keep up, and stays visible as such).
    let kept = if lab.paused || lab.stepping {
        kept_time(&lab.view.spans, t0, t1)
    } else {
        vec![(t0, t1)]
    };
    let shown: u64 = kept.iter().map(|(a, b)| b - a).sum::<u64>().max(1);
    let cut = if kept.len() > 1 { ", pauses cut" } else { "" };
    let block = Block::default().borders(Borders::ALL).title(TextSpan::styled(
        format!(" timeline · last {}{cut} ", duration_text(shown)),
        theme.title(),
    ));
    let inner = block.inner(area);
    block.render(area, buf);
    let workers = lab.current_workers();
    let label_w = 5u16;
    if inner.width <= label_w + 2 || inner.height == 0 {
        return;
    }
    let cells = (inner.width - label_w) as u64;
    let dt = (shown / cells).max(1);
    let cell_pieces: Vec<Vec<(u64, u64)>> = (0..cells).map(|c| real_pieces(&kept, c * dt, dt)).collect();
    let rows = (inner.height as usize).saturating_sub(1).max(1);
    // Too many workers for the rows: the last row says how many are not drawn (it
    // takes a worker's row, so that worker is among them).
    let drawn = if workers > rows { rows - 1 } else { workers };
    for w in 0..drawn {
        let y = inner.y + w as u16;
        let slow = lab.exp.stragglers.iter().any(|s| s.worker == w);
        let label = format!("w{w}{}", if slow { "*" } else { "" });
        let style = if w == lab.selected {
            theme.selected()
        } else {
            theme.dim()
        };
        buf.set_stringn(inner.x, y, &label, label_w as usize, style);
        if let Some(spans) = lab.view.spans.get(w) {
            for (c, pieces) in cell_pieces.iter().enumerate() {
                if let Some(p) = dominant(spans, pieces) {
                    buf.set_string(inner.x + label_w + c as u16, y, theme.phase_symbol(p), theme.phase(p));
                }
            }
        }
    }
    if workers > drawn {
        let hidden = workers - drawn;
        let more = format!("… {hidden} more worker{}", if hidden == 1 { "" } else { "s" });
        buf.set_stringn(
            inner.x,
            inner.y + rows as u16 - 1,
            more,
            inner.width as usize,
            theme.dim(),
        );
    }
    // Legend on the last row: only the phases this mode (and device) has.
    let gpu = lab.exp.device == crate::session::Device::Gpu;
    let phases: &[Phase] = match (lab.current_mode().uses_server(), gpu) {
        (true, false) => &[Phase::Wait, Phase::Pull, Phase::Forward, Phase::Backward, Phase::Push],
        (true, true) => &[
            Phase::Wait,
            Phase::Pull,
            Phase::ToDevice,
            Phase::Forward,
            Phase::Backward,
            Phase::ToHost,
            Phase::Push,
        ],
        (false, false) => &[Phase::Forward, Phase::Backward, Phase::AllReduce, Phase::Update],
        (false, true) => &[
            Phase::Forward,
            Phase::Backward,
            Phase::ToHost,
            Phase::AllReduce,
            Phase::ToDevice,
            Phase::Update,
        ],
    };
    let mut legend = Vec::new();
    for &p in phases {
        legend.push(TextSpan::styled(theme.phase_symbol(p), theme.phase(p)));
        let name = if theme.color {
            p.name().to_string()
        } else {
            format!("={}", p.name())
        };
        legend.push(TextSpan::styled(format!("{name} "), theme.dim()));
    }
    if lab.exp.stragglers.iter().any(|s| s.worker < workers) {
        legend.push(TextSpan::styled("*straggler", theme.dim()));
    }
    let legend_area = Rect {
        y: inner.y + inner.height - 1,
        height: 1,
        ..inner
    };
    Paragraph::new(Line::from(legend)).render(legend_area, buf);
}

/// "0.29 ms", "12.4 ms", "3.2 s".
fn duration_text(ns: u64) -> String {
    match ns {
        n if n < 10_000_000 => format!("{:.2} ms", n as f64 / 1e6),
        n if n < 1_000_000_000 => format!("{:.1} ms", n as f64 / 1e6),
        n => format!("{:.1} s", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn span(phase: Phase, start_ns: u64, end_ns: u64) -> Span {
        Span {
            phase,
            step: 0,
            start_ns,
            end_ns,
        }
    }

    #[test]
    fn a_person_s_pause_between_phases_is_cut_out_of_the_window() {
        // Two phases of 1 ms, 10 s apart (a press of step each).
        let spans = vec![VecDeque::from(vec![
            span(Phase::Forward, 0, 1_000_000),
            span(Phase::Backward, 10_001_000_000, 10_002_000_000),
        ])];
        let kept = kept_time(&spans, 0, 10_002_000_000);
        assert_eq!(kept, vec![(0, 1_000_000), (10_001_000_000, 10_002_000_000)]);
        // Two cells of 1 ms each: one per phase, no blank between them.
        let first = real_pieces(&kept, 0, 1_000_000);
        let second = real_pieces(&kept, 1_000_000, 1_000_000);
        assert_eq!(dominant(&spans[0], &first), Some(Phase::Forward));
        assert_eq!(dominant(&spans[0], &second), Some(Phase::Backward));
        // A cell straddling the cut is made of both sides.
        assert_eq!(
            real_pieces(&kept, 500_000, 1_000_000),
            vec![(500_000, 1_000_000), (10_001_000_000, 10_001_500_000)]
        );
    }

    #[test]
    fn short_gaps_stay_where_they_are() {
        let spans = vec![VecDeque::from(vec![
            span(Phase::Forward, 0, 1_000),
            span(Phase::Backward, 3_000, 4_000),
        ])];
        assert_eq!(kept_time(&spans, 0, 4_000), vec![(0, 4_000)]);
    }
}
