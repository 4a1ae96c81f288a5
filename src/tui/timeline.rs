//! The per-worker timeline: the last few steps of every worker as coloured phase blocks,
//! so that a straggler, and everyone waiting for it, shows at a glance.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span as TextSpan};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};

use super::app::{Lab, Span};
use super::theme::Theme;
use crate::train::Phase;

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

/// The phase that covers most of [t0, t1) in `spans`.
fn dominant(spans: &std::collections::VecDeque<Span>, t0: u64, t1: u64) -> Option<Phase> {
    let mut best = (0u64, None);
    // Spans are in time order; walk back from the end while they can overlap.
    for s in spans.iter().rev() {
        if s.end_ns <= t0 {
            break;
        }
        let overlap = s.end_ns.min(t1).saturating_sub(s.start_ns.max(t0));
        if overlap > best.0 {
            best = (overlap, Some(s.phase));
        }
    }
    best.1
}

pub fn render(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let (t0, t1) = window(lab);
    let span_ms = (t1 - t0) as f64 / 1e6;
    let block = Block::default().borders(Borders::ALL).title(TextSpan::styled(
        format!(" timeline · last {span_ms:.2} ms "),
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
    let dt = ((t1 - t0) / cells).max(1);
    let rows = (inner.height as usize).saturating_sub(1).max(1);
    for w in 0..workers.min(rows) {
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
            for c in 0..cells {
                let (a, b) = (t0 + c * dt, t0 + (c + 1) * dt);
                if let Some(p) = dominant(spans, a, b) {
                    buf.set_string(inner.x + label_w + c as u16, y, theme.phase_symbol(p), theme.phase(p));
                }
            }
        }
    }
    if workers > rows {
        let more = format!("… {} more workers", workers - rows);
        buf.set_stringn(
            inner.x,
            inner.y + rows as u16 - 1,
            more,
            inner.width as usize,
            theme.dim(),
        );
    }
    // Legend on the last row: only the phases this mode (and device) has.
    let gpu = lab.exp.device == crate::gpu::Device::Gpu;
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
