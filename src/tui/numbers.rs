//! The numbers panel: throughput, bandwidth, idle time, staleness, and what just changed.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget, Wrap};

use super::lab::Lab;
use super::theme::Theme;
use crate::session::{Phase, RunState};

/// Rates over the records of the last `window_s` seconds of run time.
pub fn recent_rates(st: &RunState, window_s: f64) -> (f64, f64) {
    let Some(last) = st.steps.last() else { return (0.0, 0.0) };
    let t_end = last.t_ns as f64 / 1e9;
    // The reports of the last `window_s`, and at least the two latest: in slow motion a
    // step can take longer than the window, and one report makes no rate.
    let first = st
        .steps
        .iter()
        .rev()
        .enumerate()
        .take_while(|(i, s)| *i < 2 || t_end - s.t_ns as f64 / 1e9 <= window_s)
        .last()
        .map_or(last, |(_, s)| s);
    let dt = t_end - first.t_ns as f64 / 1e9;
    if dt <= 0.0 {
        return (0.0, 0.0);
    }
    let updates = last.step.saturating_sub(first.step) as f64;
    let samples = (last.samples - first.samples) as f64;
    (updates / dt, samples / dt)
}

/// Bytes every worker together sent per training sample over the current segment's
/// last `window` steps (local SGD's averaging and compressed gradients show here as
/// fewer bytes for the same samples); `None` before two steps of the segment.
pub fn bytes_per_sample(st: &RunState, window: usize) -> Option<f64> {
    let since_ns = st.current().map_or(0, |seg| seg.t_ns);
    let recent: Vec<_> = st
        .steps
        .iter()
        .rev()
        .filter(|s| s.worker.is_none())
        .take_while(|s| s.t_ns >= since_ns)
        .take(window + 1)
        .collect();
    let (last, first) = (recent.first()?, recent.last()?);
    let samples = last.samples.checked_sub(first.samples).filter(|&s| s > 0)?;
    // (the oldest record only marks where the window starts: its bytes came before)
    let bytes: u64 = recent[..recent.len() - 1].iter().map(|s| s.bytes_sent).sum();
    Some(bytes as f64 / samples as f64)
}

/// Why the measured communication is far above the α-β model's price, when it is: on
/// a link this fast the messages cost little, and the time goes to the threads taking
/// turns on the cores (or to the machine's other programs).
pub fn beyond_the_model(model_ns: u64, measured_ns: u64, workers: usize) -> Option<String> {
    if measured_ns <= 3 * model_ns.max(1) {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(if workers > cores {
        format!(
            "(measured ≫ model: {workers} worker threads share {cores} cores, so waiting for a core, not the link, takes the time)"
        )
    } else {
        "(measured ≫ model: on a link this fast, handing messages between threads costs more than the link's α and β)"
            .to_string()
    })
}

/// A rate as a person reads it: whole numbers, with a decimal below 10 (slow motion's
/// 0.8 steps/s is not 1, nor 0).
fn rate(per_s: f64) -> String {
    if per_s > 0.0 && per_s < 10.0 {
        format!("{per_s:.1}")
    } else {
        format!("{per_s:.0}")
    }
}

pub fn render(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let st = lab.state();
    let (steps_s, samples_s) = recent_rates(st, 1.0);
    let mut lines = vec![Line::from(vec![
        Span::styled("steps/s ", theme.dim()),
        Span::raw(format!("{:<9}", rate(steps_s))),
        Span::styled("samples/s ", theme.dim()),
        Span::raw(rate(samples_s)),
    ])];
    if lab.current_mode().uses_server() {
        let mean = st.staleness_mean().map_or("–".into(), |m| format!("{m:.2}"));
        lines.push(Line::from(vec![
            Span::styled("staleness ", theme.dim()),
            Span::raw(format!("mean {mean} max {} ", st.staleness_max)),
            Span::styled("dropped ", theme.dim()),
            Span::raw(st.dropped_gradients.to_string()),
        ]));
    } else if let Some(last) = st.steps.iter().rev().find(|s| s.worker.is_none() && s.allreduce_ns > 0) {
        if lab.stepping {
            // (each round waits for a press: its time is the person's, not the link's)
            lines.push(Line::from(vec![
                Span::styled("all-reduce ", theme.dim()),
                Span::raw("held round by round by n: its time is your pace, not the link's"),
            ]));
        } else {
            // busbw of the latest all-reduce (nccl-tests): bytes / time · 2(N−1)/N
            let bytes = st.allreduce_buffer_bytes() as f64;
            let busbw = bytes / last.allreduce_ns as f64 * crate::session::busbw_factor(lab.current_workers());
            lines.push(Line::from(vec![
                Span::styled("all-reduce ", theme.dim()),
                Span::raw(format!(
                    "{:.3} ms · busbw {busbw:.2} GB/s",
                    last.allreduce_ns as f64 / 1e6
                )),
            ]));
            if let Some(model) = last.allreduce_model_ns {
                // The model prices the messages; compare it with the communication alone.
                lines.push(Line::from(vec![
                    Span::styled("α-β model ", theme.dim()),
                    Span::raw(format!(
                        "{:.3} ms · measured comm {:.3} ms",
                        model as f64 / 1e6,
                        last.allreduce_comm_ns as f64 / 1e6
                    )),
                ]));
                if let Some(why) = beyond_the_model(model, last.allreduce_comm_ns, lab.current_workers()) {
                    lines.push(Line::styled(why, theme.dim()));
                }
            }
        }
    }
    if let Some(b) = bytes_per_sample(st, 64) {
        lines.push(Line::from(vec![
            Span::styled("on the wire ", theme.dim()),
            Span::raw(format!("{b:.0} bytes per sample")),
        ]));
    }
    lines.push(Line::from(vec![
        Span::styled("idle ", theme.dim()),
        Span::raw(format!("{:.0} % of worker time", st.idle_fraction() * 100.0)),
    ]));
    // The compute of a worker's step (forward, backward, its update): the one figure
    // threads change, so it stands beside how many each worker has
    // (below the idle share: where the panel is short, it goes first).
    let compute: Vec<f64> = lab
        .view
        .reports
        .iter()
        .flatten()
        .map(|r| {
            [Phase::Forward, Phase::Backward, Phase::Update]
                .iter()
                .map(|p| r.phase_ns[p.index()])
                .sum::<u64>() as f64
        })
        .collect();
    if !compute.is_empty() {
        let threads = st.current().map_or(lab.exp.threads, |s| s.threads);
        lines.push(Line::from(vec![
            Span::styled("compute ", theme.dim()),
            Span::raw(format!(
                "{:.3} ms/step{}",
                compute.iter().sum::<f64>() / compute.len() as f64 / 1e6,
                // (a GPU worker computes on its GPU, not on CPU threads)
                if lab.exp.device == crate::session::Device::Gpu {
                    String::new()
                } else {
                    format!(" · {}", super::view::threads_words(threads))
                }
            )),
        ]));
    }
    if let Some(e) = &lab.error {
        lines.push(Line::styled(e.clone(), theme.bad()));
    }
    for m in lab.messages.iter().rev() {
        lines.push(Line::styled(m.clone(), theme.warn()));
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: true })
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(Span::styled(" numbers ", theme.title())),
        )
        .render(area, buf);
}
