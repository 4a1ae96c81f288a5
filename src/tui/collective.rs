//! The collective view: in sync mode the messages of the latest all-reduce round (ring,
//! tree or naive) as they really moved; with a parameter server, who pulled which version
//! and how stale each applied gradient was.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Sparkline, Widget, Wrap};

use super::lab::Lab;
use super::theme::Theme;
use crate::session::{AllReduceAlgo, Phase};

pub fn render(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    if lab.current_mode().uses_server() {
        server(lab, theme, area, buf)
    } else {
        all_reduce(lab, theme, area, buf)
    }
}

fn all_reduce(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let n = lab.current_workers();
    let algo = lab.state().current().map_or(lab.exp.allreduce, |s| s.allreduce);
    // Top-k's pairs sit at different indices on every worker: they cannot be added on
    // the way, so they are all-gathered (a ring of N−1 rounds) and added by everyone.
    let compress = lab.state().compress;
    let gather =
        matches!(compress, crate::session::Compress::TopK(_)) && lab.current_mode() == crate::session::Mode::Sync;
    let rounds = if gather { n.saturating_sub(1) } else { algo.rounds(n) };
    let title = if n == 1 {
        " all-reduce · 1 worker ".to_string()
    } else if gather {
        format!(" {compress} all-gather of (index, value) pairs · {n} workers · {rounds} rounds ")
    } else {
        format!(" {algo} all-reduce · {n} workers · {rounds} rounds ")
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(title, theme.title()));
    let inner = block.inner(area);
    block.render(area, buf);

    let mut lines = Vec::new();
    if n == 1 {
        lines.push(Line::styled(
            "one worker: nothing to all-reduce — its gradient goes to the update as it is",
            theme.dim(),
        ));
        Paragraph::new(lines).wrap(Wrap { trim: true }).render(inner, buf);
        return;
    }
    // The latest step that has messages, and within it the latest round.
    if let Some(&(step, _)) = lab.view.transfers.back() {
        let in_step: Vec<_> = lab
            .view
            .transfers
            .iter()
            .filter(|(s, _)| *s == step)
            .map(|(_, t)| *t)
            .collect();
        let round = in_step.iter().map(|t| t.round).max().unwrap_or(0);
        let phase = match algo {
            _ if gather => "all-gather: pass each worker's (index, value) pairs on; everyone adds them all up",
            AllReduceAlgo::Ring if (round as usize) < n - 1 => "reduce-scatter: add the incoming chunk to your own",
            AllReduceAlgo::Ring => "all-gather: pass the finished chunks on",
            AllReduceAlgo::Tree => "recursive doubling: swap with your partner, add",
            AllReduceAlgo::Naive if round == 0 => "everyone sends its whole gradient to worker 0",
            AllReduceAlgo::Naive => "worker 0 sends the sum back to everyone",
            AllReduceAlgo::Hierarchical => "reduce in each node, ring among node leaders, broadcast in each node",
            AllReduceAlgo::TwoD => "reduce-scatter in each node, all-reduce each shard across nodes, all-gather",
            AllReduceAlgo::Mpi => "the MPI library's own all-reduce",
        };
        lines.push(Line::from(vec![
            Span::styled(format!("step {step} · round {}/{rounds} · ", round + 1), theme.title()),
            Span::raw(phase),
        ]));
        let mut moved: Vec<_> = in_step.iter().filter(|t| t.round == round).collect();
        moved.sort_by_key(|t| (t.from, t.to));
        for t in moved.iter().take(inner.height.saturating_sub(3) as usize) {
            let what = if gather {
                format!("w{}'s pairs", t.chunk)
            } else if algo == AllReduceAlgo::Ring {
                format!("chunk {}", t.chunk)
            } else {
                "whole gradient".into()
            };
            lines.push(Line::from(vec![
                Span::styled(
                    format!("  w{:<2} ──{}──▶ w{:<2}", t.from, crate::units::bytes(t.bytes), t.to),
                    theme.phase(Phase::AllReduce),
                ),
                Span::styled(
                    format!("  {what} · {:.1} µs", (t.end_ns - t.start_ns) as f64 / 1e3),
                    theme.dim(),
                ),
            ]));
        }
        if moved.len() + 3 > inner.height as usize {
            lines.push(Line::styled(
                format!("  … {} messages in this round", moved.len()),
                theme.dim(),
            ));
        }
        let total: u64 = in_step.iter().map(|t| t.bytes).sum();
        lines.push(Line::styled(
            format!(
                "this step moved {} in {} messages",
                crate::units::bytes(total),
                in_step.len()
            ),
            theme.dim(),
        ));
    } else if n > 1 {
        lines.push(Line::styled("waiting for the first all-reduce…", theme.dim()));
    }
    Paragraph::new(lines).wrap(Wrap { trim: true }).render(inner, buf);
}

fn server(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let st = lab.state();
    let version = st.updates();
    let block = Block::default().borders(Borders::ALL).title(Span::styled(
        format!(" parameter server · {} · version {version} ", lab.current_mode()),
        theme.title(),
    ));
    let inner = block.inner(area);
    block.render(area, buf);
    let mut lines = Vec::new();
    let rows = inner.height.saturating_sub(3) as usize;
    // Every worker has a row, those that have not pushed yet too (a worker missing from
    // the list would look like one that does not exist).
    let workers = lab.current_workers();
    // (one row for "+N more" when not every worker fits)
    let rows = if workers > rows { rows.saturating_sub(1) } else { rows };
    for w in 0..workers.min(rows) {
        // (a report from before the current segment is another mode's: a sync step's)
        let since_ns = st.current().map_or(0, |seg| seg.t_ns);
        let report = lab.view.reports.get(w).and_then(Option::as_ref);
        let Some(r) = report.filter(|r| r.end_ns >= since_ns) else {
            lines.push(Line::from(vec![
                Span::styled(format!("  w{w:<2} "), theme.phase(Phase::Push)),
                Span::styled("no push yet", theme.dim()),
            ]));
            continue;
        };
        let what = if r.dropped {
            Span::styled("gradient DROPPED: its step had closed".to_string(), theme.warn())
        } else {
            Span::raw(format!("pushed, staleness {}", r.staleness.unwrap_or(0)))
        };
        lines.push(Line::from(vec![
            Span::styled(format!("  w{w:<2} "), theme.phase(Phase::Push)),
            what,
            Span::styled(format!(" · {} ahead of the slowest", r.lead), theme.dim()),
        ]));
    }
    if workers > rows {
        lines.push(Line::styled(format!("  +{} more workers", workers - rows), theme.dim()));
    }
    let mean = st.staleness_mean().map_or("–".into(), |m| format!("{m:.2}"));
    lines.push(Line::styled(
        format!(
            "staleness mean {mean}, max {} · dropped {}",
            st.staleness_max, st.dropped_gradients
        ),
        theme.dim(),
    ));
    let text_h = (lines.len() as u16).min(inner.height);
    Paragraph::new(lines).render(
        Rect {
            height: text_h,
            ..inner
        },
        buf,
    );
    // The staleness histogram below the text, when there is room.
    if inner.height > text_h + 1 {
        let last = st.staleness_histogram.iter().rposition(|&c| c > 0).map_or(1, |i| i + 1);
        let hist: Vec<u64> = st.staleness_histogram[..last.min(st.staleness_histogram.len())].to_vec();
        let spark_area = Rect {
            y: inner.y + text_h,
            height: inner.height - text_h,
            width: (hist.len() as u16).min(inner.width),
            ..inner
        };
        Sparkline::default()
            .data(&hist)
            .style(theme.phase(Phase::Push))
            .render(spark_area, buf);
    }
}
