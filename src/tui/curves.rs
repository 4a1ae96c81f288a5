//! Curves: training loss and test accuracy, against time or samples processed, with the
//! kept ghosts of earlier runs faded behind.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::Span;
use ratatui::widgets::{Axis as ChartAxis, Block, Borders, Chart, Dataset, GraphType, Widget};

use super::lab::{Axis, Lab};
use super::theme::Theme;

fn x_of(axis: Axis, t_s: f64, samples: f64) -> f64 {
    match axis {
        Axis::Time => t_s,
        Axis::Samples => samples,
    }
}

pub fn render(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let st = lab.state();
    let axis = lab.curves_axis();
    let loss: Vec<(f64, f64)> = st
        .steps
        .iter()
        .map(|s| (x_of(axis, s.t_ns as f64 / 1e9, s.samples as f64), s.loss.min(10.0)))
        .collect();
    let acc: Vec<(f64, f64)> = st
        .evals
        .iter()
        .map(|e| (x_of(axis, e.t_ns as f64 / 1e9, e.samples as f64), e.test_accuracy))
        .collect();
    let ghosts_loss: Vec<Vec<(f64, f64)>> = lab
        .ghosts
        .iter()
        .map(|g| {
            g.loss
                .iter()
                .map(|&(t, s, l)| (x_of(axis, t, s), l.min(10.0)))
                .collect()
        })
        .collect();
    let ghosts_acc: Vec<Vec<(f64, f64)>> = lab
        .ghosts
        .iter()
        .map(|g| g.accuracy.iter().map(|&(t, s, a)| (x_of(axis, t, s), a)).collect())
        .collect();

    let x_max = loss
        .iter()
        .chain(ghosts_loss.iter().flatten())
        .map(|p| p.0)
        .fold(1e-9, f64::max);
    let loss_max = loss
        .iter()
        .chain(ghosts_loss.iter().flatten())
        .map(|p| p.1)
        .fold(0.5, f64::max);
    let x_title = match axis {
        Axis::Time => "seconds",
        Axis::Samples => "samples",
    };
    let x_labels = vec![Span::raw("0"), Span::raw(format_x(axis, x_max))];

    let [top, bottom] = Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);

    let last_loss = loss.last().map_or("–".into(), |p| format!("{:.3}", p.1));
    let loss_chart = Plot {
        title: format!(" training loss {last_loss} · x: {x_title} "),
        name: "loss",
        style: theme.loss(),
        points: &loss,
        ghosts: &ghosts_loss,
        y_max: loss_max,
        y_top_label: format!("{loss_max:.1}"),
    };
    loss_chart.render(lab, theme, [0.0, x_max], &x_labels, top, buf);
    let last_acc = acc.last().map_or("–".into(), |p| format!("{:.1} %", p.1 * 100.0));
    let acc_chart = Plot {
        title: format!(" test accuracy {last_acc} "),
        name: "test acc",
        style: theme.accuracy(),
        points: &acc,
        ghosts: &ghosts_acc,
        y_max: 1.0,
        y_top_label: "100%".into(),
    };
    acc_chart.render(lab, theme, [0.0, x_max], &x_labels, bottom, buf);
}

/// One chart: the live curve over the ghosts' faded ones.
struct Plot<'a> {
    title: String,
    name: &'static str,
    style: ratatui::style::Style,
    points: &'a [(f64, f64)],
    ghosts: &'a [Vec<(f64, f64)>],
    y_max: f64,
    y_top_label: String,
}

impl Plot<'_> {
    fn render(
        self,
        lab: &Lab,
        theme: &Theme,
        x_bounds: [f64; 2],
        x_labels: &[Span<'static>],
        area: Rect,
        buf: &mut Buffer,
    ) {
        let mut sets: Vec<Dataset> = lab
            .ghosts
            .iter()
            .zip(self.ghosts)
            .map(|(g, pts)| {
                Dataset::default()
                    .name(g.label.clone())
                    .marker(Marker::Dot)
                    .graph_type(GraphType::Line)
                    .style(theme.ghost())
                    .data(pts)
            })
            .collect();
        sets.push(
            Dataset::default()
                .name(self.name)
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(self.style)
                .data(self.points),
        );
        Chart::new(sets)
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(Span::styled(self.title, theme.title())),
            )
            .x_axis(
                ChartAxis::default()
                    .bounds(x_bounds)
                    .labels(x_labels.to_vec())
                    .style(theme.dim()),
            )
            .y_axis(
                ChartAxis::default()
                    .bounds([0.0, self.y_max])
                    .labels(vec![Span::raw("0"), Span::raw(self.y_top_label)])
                    .style(theme.dim()),
            )
            .render(area, buf);
    }
}

fn format_x(axis: Axis, x: f64) -> String {
    match axis {
        Axis::Time if x < 1.0 => format!("{:.1} ms", x * 1e3),
        Axis::Time => format!("{x:.1} s"),
        Axis::Samples if x >= 1e6 => format!("{:.1}M", x / 1e6),
        Axis::Samples if x >= 1e3 => format!("{:.0}k", x / 1e3),
        Axis::Samples => format!("{x:.0}"),
    }
}
