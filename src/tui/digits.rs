//! The inputs each worker is processing right now, drawn in half-block characters: one
//! terminal cell shows two pixels, the upper as the foreground of '▀', the lower as its
//! background. Without colour, a character ramp stands in for the grey levels.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Widget};

use super::lab::Lab;
use super::theme::Theme;

const RAMP: &[u8] = b" .:-=+*#%@";

/// Draws image `pixels` (w×h, values 0..1) at (x, y), downsampled by `step`; returns the
/// width drawn.
pub fn draw_image(
    buf: &mut Buffer,
    theme: &Theme,
    x: u16,
    y: u16,
    pixels: &[f32],
    (w, h): (usize, usize),
    step: usize,
) -> u16 {
    let at = |r: usize, c: usize| -> f32 {
        // the mean of a step×step block
        let mut sum = 0.0;
        for dr in 0..step {
            for dc in 0..step {
                sum += pixels.get((r * step + dr) * w + c * step + dc).copied().unwrap_or(0.0);
            }
        }
        sum / (step * step) as f32
    };
    let (cols, rows) = (w / step, h / step);
    for r in (0..rows).step_by(2) {
        for c in 0..cols {
            let (top, bottom) = (at(r, c), if r + 1 < rows { at(r + 1, c) } else { 0.0 });
            let cell = &mut buf[(x + c as u16, y + (r / 2) as u16)];
            if theme.color {
                cell.set_symbol("▀")
                    .set_fg(theme.pixel((top.clamp(0.0, 1.0) * 255.0) as u8))
                    .set_bg(theme.pixel((bottom.clamp(0.0, 1.0) * 255.0) as u8));
            } else {
                let level = ((top + bottom) / 2.0).clamp(0.0, 1.0);
                let ch = RAMP[((level * (RAMP.len() - 1) as f32).round() as usize).min(RAMP.len() - 1)];
                cell.set_char(ch as char);
            }
        }
    }
    cols as u16
}

pub fn render(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(" what each worker sees ", theme.title()));
    let inner = block.inner(area);
    block.render(area, buf);
    let Some((w, h)) = lab.data.image else {
        buf.set_stringn(
            inner.x,
            inner.y,
            "(2-D points: no images)",
            inner.width as usize,
            theme.dim(),
        );
        return;
    };
    // Downsample MNIST's 28×28 to 14×14 so that several workers fit.
    let step = if w > 16 { 2 } else { 1 };
    let (cols, rows) = ((w / step) as u16, ((h / step) as u16).div_ceil(2));
    if inner.height < rows + 1 || inner.width < cols {
        return;
    }
    let mut x = inner.x;
    let with_batch: Vec<(usize, u32)> = lab
        .view
        .batches
        .iter()
        .enumerate()
        .filter_map(|(w, b)| Some((w, *b.as_ref()?.1.first()?)))
        .collect();
    let right = inner.x + inner.width;
    for (drawn, &(worker, i)) in with_batch.iter().enumerate() {
        // This image fits, and so does the next one, or it is the last: else "+N more".
        let last = drawn + 1 == with_batch.len();
        if x + cols > right || !last && x + 2 * cols + 1 > right {
            let more = format!("+{} more", with_batch.len() - drawn);
            buf.set_stringn(x, inner.y, more, (right - x) as usize, theme.dim());
            break;
        }
        let pixels = lab.data.train_x.row(i as usize);
        let pixels = pixels
            .as_slice()
            .expect("rows of a standard-layout array are contiguous");
        draw_image(buf, theme, x, inner.y, pixels, (w, h), step);
        let label = format!("w{worker}:{}", lab.data.train_y[i as usize]);
        buf.set_stringn(x, inner.y + rows, label, cols as usize, theme.dim());
        x += cols + 1;
    }
}
