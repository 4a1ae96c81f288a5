//! The pure view: draws the app into a frame. Nothing here changes state.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};
use ratatui::Frame;

use super::keys::{Action, Binding, HOME_KEYS, LAB_KEYS};
use super::lab::Lab;
use super::theme::Theme;
use super::{App, HomeItem, Screen, FREE_LAB};
use crate::lesson::Panel;
use crate::session::LrScaling;

/// Smaller than this, the lab shows a message instead of squeezed panels.
pub const MIN_SIZE: (u16, u16) = (60, 18);

pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    render(app, area, frame.buffer_mut());
}

/// Draws `app` into `buf` (the same function drives the terminal and the tests).
pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let theme = &app.theme;
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let text = format!(
            "The terminal is {}×{}; ddlab needs at least {}×{}. Enlarge the window (or make the font smaller) — the lab carries on meanwhile.",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .style(theme.warn())
            .render(area, buf);
        return;
    }
    match (&app.screen, &app.lab) {
        (Screen::Lab, Some(lab)) => lab_view(app, lab, theme, area, buf),
        _ => home(app, theme, area, buf),
    }
    if app.help {
        let keys = if app.screen == Screen::Lab { LAB_KEYS } else { HOME_KEYS };
        help(keys, &app.help_scroll, theme, area, buf);
    }
}

/// The footer: the table's footer keys, on one line or two when one is too narrow,
/// always ending with help and quit (so that a narrow terminal still says how to get
/// out); keys that fit on neither line are left to the help.
fn footer(keys: &[Binding], theme: &Theme, width: u16) -> Vec<Line<'static>> {
    let entry = |b: &Binding| (b.label.chars().count() + b.short.chars().count() + 3) as u16;
    let is_last = |b: &Binding| matches!(b.action, Action::Help | Action::Quit);
    let mut order: Vec<&Binding> = keys.iter().filter(|b| b.footer && !is_last(b)).collect();
    order.extend(keys.iter().filter(|b| is_last(b)));
    let fits = |n: usize| order[..n].iter().map(|b| entry(b)).sum::<u16>() <= width;
    let mut lines: Vec<Vec<&Binding>> = Vec::new();
    if fits(order.len()) {
        lines.push(order);
    } else {
        // Two lines: the first as full as it goes, the rest (help and quit kept) below.
        let mut first = Vec::new();
        let mut room = width;
        let mut rest: Vec<&Binding> = Vec::new();
        for b in order {
            if rest.is_empty() && !is_last(b) && entry(b) <= room {
                room -= entry(b);
                first.push(b);
            } else {
                rest.push(b);
            }
        }
        let mut room = width.saturating_sub(rest.iter().filter(|b| is_last(b)).map(|b| entry(b)).sum());
        let second: Vec<&Binding> = rest
            .into_iter()
            .filter(|b| {
                if is_last(b) {
                    return true;
                }
                let keep = entry(b) <= room;
                room = room.saturating_sub(if keep { entry(b) } else { 0 });
                keep
            })
            .collect();
        lines.push(first);
        lines.push(second);
    }
    lines
        .into_iter()
        .map(|shown| {
            let mut spans = Vec::new();
            for b in shown {
                spans.push(Span::styled(b.label, theme.key()));
                spans.push(Span::raw(format!(" {}  ", b.short)));
            }
            Line::from(spans)
        })
        .collect()
}

/// The help overlay: every binding of the table, scrolled by the arrows when the screen
/// is too short for all of them.
fn help(keys: &[Binding], scroll: &std::cell::Cell<u16>, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let w = area.width.min(90);
    let label_w = keys.iter().map(|b| b.label.chars().count()).max().unwrap_or(1);
    let lines: Vec<Line> = keys
        .iter()
        .filter(|b| !b.help.is_empty())
        .map(|b| {
            Line::from(vec![
                Span::styled(format!("{:>label_w$}  ", b.label), theme.key()),
                Span::raw(b.help_text()),
            ])
        })
        .collect();
    let body = Paragraph::new(lines).wrap(Wrap { trim: false });
    let total = body.line_count(w.saturating_sub(2)) as u16;
    let h = (total + 3).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    Clear.render(r, buf);
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(" keys ", theme.title()));
    let inner = block.inner(r);
    block.render(r, buf);
    let text_h = inner.height.saturating_sub(1);
    let max = total.saturating_sub(text_h);
    scroll.set(scroll.get().min(max));
    body.scroll((scroll.get(), 0)).render(
        Rect {
            height: text_h,
            ..inner
        },
        buf,
    );
    let more = if max > 0 { "↑↓ scroll · " } else { "" };
    buf.set_stringn(
        inner.x,
        inner.y + text_h,
        format!("{more}? or Esc closes this help"),
        inner.width as usize,
        theme.dim(),
    );
}

fn home(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let keys = footer(HOME_KEYS, theme, area.width);
    let [title, body, foot] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(5),
        Constraint::Length(keys.len() as u16),
    ])
    .areas(area);
    Paragraph::new(vec![
        Line::styled(
            "ddlab — a lab for data-parallel distributed deep learning",
            theme.title(),
        ),
        Line::styled(
            "Watch forward, backward, all-reduce and update happen on N workers while a real network trains.",
            theme.dim(),
        ),
    ])
    .wrap(Wrap { trim: true })
    .block(Block::default().borders(Borders::BOTTOM))
    .render(title, buf);
    let mut lines: Vec<Line> = app
        .home_items()
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let style = if i == app.home_selected {
                theme.selected()
            } else {
                ratatui::style::Style::default()
            };
            let (name, mark, about) = match item {
                HomeItem::FreeLab => (FREE_LAB.0.to_string(), String::new(), FREE_LAB.1.to_string()),
                HomeItem::Lesson(l) => {
                    let lesson = &app.lessons[l];
                    let mark = match app.progress.progress.lessons.get(&lesson.id) {
                        Some(p) if p.completed => "✓".to_string(),
                        Some(p) => format!("{}/{}", p.page + 1, lesson.pages.len()),
                        None => String::new(),
                    };
                    (
                        format!("{:>2}. {}", lesson.number, lesson.title),
                        mark,
                        lesson.summary.clone(),
                    )
                }
                HomeItem::Quit => ("Quit".to_string(), String::new(), "leave ddlab".to_string()),
            };
            // (the body's margin, the name, the mark and their gaps)
            let room = (area.width as usize).saturating_sub(2 + 2 + 32 + 5 + 2);
            Line::from(vec![
                Span::styled(format!("  {name:<32}"), style),
                Span::styled(format!("{mark:>5}"), theme.good()),
                Span::styled(format!("  {}", cut_at_a_word(&about, room)), theme.dim()),
            ])
        })
        .collect();
    if let Some(e) = &app.lessons_error {
        lines.push(Line::raw(""));
        lines.push(Line::styled(format!("The lessons cannot be read: {e}"), theme.bad()));
    }
    if let Some(w) = &app.progress.warning {
        lines.push(Line::raw(""));
        lines.push(Line::styled(w.clone(), theme.warn()));
    }
    Paragraph::new(lines).render(
        body.inner(ratatui::layout::Margin {
            horizontal: 1,
            vertical: 1,
        }),
        buf,
    );
    Paragraph::new(keys).render(foot, buf);
}

/// `text` in at most `room` columns: whole, or cut after the last word that fits,
/// with "…" (a summary cut mid-word, "staleness ≈ N −", reads as a different claim).
fn cut_at_a_word(text: &str, room: usize) -> String {
    if text.chars().count() <= room {
        return text.to_string();
    }
    let fits: String = text.chars().take(room.saturating_sub(1)).collect();
    let words = fits.rfind(' ').map_or(fits.as_str(), |i| &fits[..i]);
    format!("{}…", words.trim_end_matches([',', ';', ':', ' ']))
}

/// One piece of the header: kept in order of `keep` (higher first) when the line is
/// too narrow, and written short when the long form does not fit.
struct Part {
    keep: u8,
    long: String,
    short: String,
    /// A longer form still, for what is worth saying only where room is left once every
    /// part has its place (the default "× 1 thread": never at the cost of the LR).
    spare: Option<String>,
    style: ratatui::style::Style,
}

/// The parts that fit in `width` columns, in their order, so that the header never
/// wraps: by importance, each takes its long form if it fits, else its short one, else
/// it is left out; then, by importance, spare forms take what room is left.
fn fit(parts: &[Part], width: usize) -> Vec<(String, ratatui::style::Style)> {
    const SEP: usize = 3; // " · "
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(parts[i].keep));
    let len = |s: &str| s.chars().count();
    let mut chosen: Vec<Option<&str>> = vec![None; parts.len()];
    let mut used = 0usize;
    for &i in &order {
        let sep = if used == 0 { 0 } else { SEP };
        for form in [&parts[i].long, &parts[i].short] {
            if used + sep + len(form) <= width {
                chosen[i] = Some(form);
                used += sep + len(form);
                break;
            }
        }
    }
    for &i in &order {
        if let (Some(now), Some(spare)) = (chosen[i], parts[i].spare.as_deref()) {
            if used - len(now) + len(spare) <= width {
                used = used - len(now) + len(spare);
                chosen[i] = Some(spare);
            }
        }
    }
    parts
        .iter()
        .zip(chosen)
        .filter_map(|(p, c)| c.map(|text| (text.to_string(), p.style)))
        .collect()
}

/// What the run is doing, as the header says it (and how it should look).
pub fn state_text(lab: &Lab, theme: &Theme) -> (String, String, ratatui::style::Style) {
    if let Some(step) = lab.diverged_at() {
        return (format!("DIVERGED at step {step}"), "DIVERGED".into(), theme.bad());
    }
    match lab.state().outcome {
        Some(crate::session::Outcome::Failed { .. }) => return ("FAILED".into(), "FAILED".into(), theme.bad()),
        Some(_) => return ("finished".into(), "finished".into(), theme.good()),
        None => {}
    }
    let pace = if lab.exp.slow > 1.0 {
        let about = lab
            .pace_target
            .map_or(String::new(), |r| format!(" ≈{}", super::lab::pace_words(r)));
        format!(" · slow ×{}{about}", lab.exp.slow)
    } else {
        String::new()
    };
    let short_pace = if lab.exp.slow > 1.0 {
        format!(" ×{}", lab.exp.slow)
    } else {
        String::new()
    };
    let (word, style) = if lab.stepping {
        ("stepping (n)", theme.warn())
    } else if lab.paused {
        ("paused", theme.warn())
    } else {
        ("running", theme.good())
    };
    (format!("{word}{pace}"), format!("{word}{short_pace}"), style)
}

fn header(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let st = lab.state();
    let seg = st.current();
    let mode = lab.current_mode();
    let n = lab.current_workers();
    let algo = seg.map_or(lab.exp.allreduce, |s| s.allreduce);
    let link = seg.map_or(lab.exp.link, |s| s.link);
    let rule = seg.map_or(lab.exp.lr_scaling, |s| s.lr_scaling);
    let plain = ratatui::style::Style::default();
    let part = |keep: u8, long: String, short: String| Part {
        keep,
        long,
        short,
        spare: None,
        style: plain,
    };
    let (state_long, state_short, state_style) = state_text(lab, theme);
    let epoch = st.last_step().map_or(0, |s| s.epoch);
    let backend = match lab.exp.backend {
        crate::session::Backend::Threads => "threads",
        crate::session::Backend::Mpi => "MPI ranks",
    };
    let mut parts = vec![
        Part {
            keep: 9,
            long: "ddlab".into(),
            short: "ddlab".into(),
            spare: None,
            style: theme.title(),
        },
        {
            // (on GPUs, which ones matter more than most of the line)
            let devices = devices_text(&st.devices, n);
            part(
                if devices.is_empty() { 3 } else { 7 },
                format!("{backend}{devices}"),
                backend.to_string(),
            )
        },
        {
            // Workers × threads, as a cluster user sets ranks × OMP_NUM_THREADS. One
            // thread is the default: said only where the line has room to spare.
            let workers = format!("{n} worker{}", if n == 1 { "" } else { "s" });
            let threads = seg.map_or(lab.exp.threads, |s| s.threads);
            let with_threads = format!("{workers} × {}", threads_words(threads));
            if threads == 1 {
                Part {
                    spare: Some(with_threads),
                    ..part(8, workers.clone(), workers)
                }
            } else {
                part(8, with_threads, format!("{n}×{threads} threads"))
            }
        },
        part(8, mode.to_string(), mode.to_string()),
        part(
            5,
            if mode.uses_server() {
                "parameter server".into()
            } else {
                format!("{algo} all-reduce")
            },
            if mode.uses_server() {
                "server".into()
            } else {
                algo.to_string()
            },
        ),
        match link {
            None => part(2, "link: shared memory".into(), "shared memory".into()),
            Some(l) => part(
                6,
                format!("link: {} ({l}) EMULATED", super::lab::link_name(Some(l))),
                format!("{} EMULATED", super::lab::link_name(Some(l))),
            ),
        },
        {
            let (lr, momentum) = seg.map_or((lab.exp.lr, lab.exp.momentum), |s| (s.lr, s.momentum));
            let lr = match rule {
                LrScaling::None => format!("LR {lr}"),
                LrScaling::Linear => format!("LR {lr}×{n}"),
            };
            part(4, format!("{lr}, momentum {momentum}"), lr)
        },
        part(7, format!("step {}", st.updates()), format!("step {}", st.updates())),
        part(
            3,
            if lab.passed_length {
                format!("epoch {epoch} (training on)")
            } else {
                format!("epoch {epoch}")
            },
            format!("epoch {epoch}"),
        ),
        Part {
            keep: 10,
            long: state_long,
            short: state_short,
            spare: None,
            style: state_style,
        },
    ];
    let pending = lab.pending();
    if !pending.is_empty() {
        let when = if lab.ended().is_some() {
            "on restart (R)"
        } else if lab.paused || lab.stepping {
            "on resume"
        } else {
            "next step"
        };
        parts.push(Part {
            keep: 9,
            long: format!("{when}: {pending}"),
            short: format!("→ {pending}"),
            spare: None,
            style: theme.warn(),
        });
    }
    let mut spans = Vec::new();
    for (i, (text, style)) in fit(&parts, area.width as usize).into_iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw(" · "));
        }
        spans.push(Span::styled(text, style));
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

/// "1 thread", "2 threads".
pub fn threads_words(threads: usize) -> String {
    format!("{threads} thread{}", if threads == 1 { "" } else { "s" })
}

/// The GPUs the `n` workers compute on, as " on gpu0 NAME (vulkan) ×4": each device
/// once, with how many workers use it (round-robin, as the engine assigns them). Empty
/// on the CPU.
pub fn devices_text(devices: &[String], n: usize) -> String {
    if devices.is_empty() || devices.iter().all(|d| d == "cpu") {
        return String::new();
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for w in 0..n {
        let d = devices[w % devices.len()].as_str();
        match counts.iter_mut().find(|(x, _)| *x == d) {
            Some((_, c)) => *c += 1,
            None => counts.push((d, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(d, c)| format!("{d} ×{c}")).collect();
    format!(" on {}", parts.join(", "))
}

/// Narrower than this, a lesson shows its text beside one panel of the lab at a time
/// (tab chooses it) instead of beside the whole lab squeezed.
pub const WIDE_LESSON: u16 = 120;

/// The lab, the lesson beside it, or the focused panel zoomed.
fn lab_view(app: &App, lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let lesson = app.lesson.as_ref();
    let pointed = |p: Panel| lesson.is_some_and(|v| v.current().point_at.contains(&p));
    if app.zoomed || lesson.is_some() && area.width < WIDE_LESSON {
        // One panel (or the lesson text) under the header, with the status and the keys.
        let (said, bad) = lab.status();
        let status_h = status_height(&said, area.width);
        let keys = footer(LAB_KEYS, theme, area.width);
        let [main, status, foot] = Layout::vertical([
            Constraint::Min(4),
            Constraint::Length(status_h),
            Constraint::Length(keys.len() as u16),
        ])
        .areas(area);
        let (text, right) = match (app.zoomed, lesson) {
            (false, Some(_)) => {
                let [text, right] =
                    Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(main);
                (Some(text), right)
            }
            _ => (None, main),
        };
        let [head, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(3)]).areas(right);
        header(lab, theme, head, buf);
        match app.shown() {
            super::Focus::Lesson => {
                if let Some(v) = lesson {
                    super::lesson::render(v, theme, body, buf);
                }
            }
            super::Focus::Panel(p) => {
                draw_panel(lab, p, theme, body, buf);
                if pointed(p) {
                    highlight(body, theme, buf);
                }
            }
        }
        if let (Some(text), Some(v)) = (text, lesson) {
            super::lesson::render(v, theme, text, buf);
        }
        status_line(&said, bad, theme, status, buf);
        Paragraph::new(keys).render(foot, buf);
        return;
    }
    let (lab_area, text) = match lesson {
        Some(_) => {
            // The narrative beside the lab: a third of a wide screen, more of a narrower one.
            let share = if area.width >= 160 { 34 } else { 40 };
            let [text, rest] =
                Layout::horizontal([Constraint::Percentage(share), Constraint::Percentage(100 - share)]).areas(area);
            (rest, Some(text))
        }
        None => (area, None),
    };
    if let (Some(text), Some(v)) = (text, lesson) {
        super::lesson::render(v, theme, text, buf);
        if app.focus == Some(super::Focus::Lesson) {
            focus_border(text, buf);
        }
    }
    for (panel, rect) in lab_screen(lab, theme, lab_area, buf) {
        if pointed(panel) {
            highlight(rect, theme, buf);
        }
        if app.focus == Some(super::Focus::Panel(panel)) {
            focus_border(rect, buf);
        }
    }
}

/// Draws one panel of the lab into `area`.
fn draw_panel(lab: &Lab, panel: Panel, theme: &Theme, area: Rect, buf: &mut Buffer) {
    match panel {
        Panel::Header => header(lab, theme, area, buf),
        Panel::Timeline => super::timeline::render(lab, theme, area, buf),
        Panel::Collective => super::collective::render(lab, theme, area, buf),
        Panel::Curves => super::curves::render(lab, theme, area, buf),
        Panel::Numbers => super::numbers::render(lab, theme, area, buf),
        Panel::Explain => super::explain::render(lab, theme, area, buf),
        Panel::Digits => super::digits::render(lab, theme, area, buf),
    }
}

/// Rows the status line needs: two when its sentence is longer than a row, so that no
/// refusal or message is ever cut.
fn status_height(said: &str, width: u16) -> u16 {
    match said.chars().count() {
        0 => 0,
        n if n > width as usize => 2,
        _ => 1,
    }
}

fn status_line(said: &str, bad: bool, theme: &Theme, area: Rect, buf: &mut Buffer) {
    Paragraph::new(Line::styled(
        said.to_string(),
        if bad { theme.bad() } else { theme.warn() },
    ))
    .wrap(Wrap { trim: true })
    .render(area, buf);
}

/// Redraws a panel's border doubled: the panel that has the focus (tab moves it, f
/// zooms it).
fn focus_border(r: Rect, buf: &mut Buffer) {
    restyle_border(r, buf, None, |s| match s {
        "─" | "━" => Some("═"),
        "│" | "┃" => Some("║"),
        "┌" | "┏" => Some("╔"),
        "┐" | "┓" => Some("╗"),
        "└" | "┗" => Some("╚"),
        "┘" | "┛" => Some("╝"),
        _ => None,
    });
}

/// Draws a panel's border heavy (and in the warning colour): where a lesson points.
fn highlight(r: Rect, theme: &Theme, buf: &mut Buffer) {
    let heavy = |s: &str| match s {
        "─" => Some("━"),
        "│" => Some("┃"),
        "┌" => Some("┏"),
        "┐" => Some("┓"),
        "└" => Some("┗"),
        "┘" => Some("┛"),
        _ => None,
    };
    restyle_border(r, buf, Some(theme.warn()), heavy);
}

/// Replaces the border symbols of `r` by what `to` says (and their style, if given).
fn restyle_border(
    r: Rect,
    buf: &mut Buffer,
    style: Option<ratatui::style::Style>,
    to: impl Fn(&str) -> Option<&'static str>,
) {
    if r.width < 2 || r.height < 2 {
        return;
    }
    let (x1, y1) = (r.x + r.width - 1, r.y + r.height - 1);
    let perimeter = (r.x..=x1)
        .flat_map(|x| [(x, r.y), (x, y1)])
        .chain((r.y..=y1).flat_map(|y| [(r.x, y), (x1, y)]));
    for (x, y) in perimeter {
        if let Some(cell) = buf.cell_mut((x, y)) {
            if let Some(h) = to(cell.symbol()) {
                cell.set_symbol(h);
                if let Some(style) = style {
                    cell.set_style(style);
                }
            }
        }
    }
}

/// Draws the lab; returns where each panel went (for a lesson to point at them).
fn lab_screen(lab: &Lab, theme: &Theme, area: Rect, buf: &mut Buffer) -> Vec<(Panel, Rect)> {
    let header_h = 1;
    // Tall enough for one digit image (half-blocks: two pixel rows a line) and its label.
    let digit_rows = lab
        .data
        .image
        .map_or(1, |(_, h)| (if h > 16 { h / 2 } else { h } as u16).div_ceil(2) + 1);
    let explain_h = if area.height >= 28 { (digit_rows + 2).max(6) } else { 6 };
    // The status line: what was just said, or what the state allows.
    let (said, bad) = lab.status();
    let status_h = status_height(&said, area.width);
    let keys = footer(LAB_KEYS, theme, area.width);
    let [head, body, bottom, status, foot] = Layout::vertical([
        Constraint::Length(header_h),
        Constraint::Min(8),
        Constraint::Length(explain_h),
        Constraint::Length(status_h),
        Constraint::Length(keys.len() as u16),
    ])
    .areas(area);
    header(lab, theme, head, buf);

    let [left, right] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(body);
    let timeline_h = (lab.current_workers() as u16 + 3).min(left.height / 2).max(4);
    let [timeline, collective] = Layout::vertical([Constraint::Length(timeline_h), Constraint::Min(3)]).areas(left);
    super::timeline::render(lab, theme, timeline, buf);
    super::collective::render(lab, theme, collective, buf);
    let numbers_h = 7.min(right.height / 2);
    let [curves, numbers] = Layout::vertical([Constraint::Min(6), Constraint::Length(numbers_h)]).areas(right);
    super::curves::render(lab, theme, curves, buf);
    super::numbers::render(lab, theme, numbers, buf);

    // (on a narrow screen the explanation needs the whole width more than the digits)
    let digits_w = match lab.data.image {
        _ if bottom.width < 100 => 0,
        Some((w, _)) if w > 16 => 15 * 4 + 2,
        Some(_) => 9 * 6 + 2,
        None => 26,
    }
    .min(bottom.width / 2);
    let [explain, digits] = Layout::horizontal([Constraint::Min(20), Constraint::Length(digits_w)]).areas(bottom);
    super::explain::render(lab, theme, explain, buf);
    if digits.width > 0 {
        super::digits::render(lab, theme, digits, buf);
    }
    status_line(&said, bad, theme, status, buf);
    Paragraph::new(keys).render(foot, buf);
    vec![
        (Panel::Header, head),
        (Panel::Timeline, timeline),
        (Panel::Collective, collective),
        (Panel::Curves, curves),
        (Panel::Numbers, numbers),
        (Panel::Explain, explain),
        (Panel::Digits, digits),
    ]
}

#[cfg(test)]
mod tests {
    use super::devices_text;

    #[test]
    fn the_header_names_each_gpu_once_with_its_workers() {
        assert_eq!(devices_text(&[], 4), "");
        assert_eq!(devices_text(&["cpu".into(), "cpu".into()], 2), "");
        let two = ["gpu0 A (vulkan)".to_string(), "gpu1 B (vulkan)".to_string()];
        assert_eq!(devices_text(&two, 3), " on gpu0 A (vulkan) ×2, gpu1 B (vulkan) ×1");
        assert_eq!(devices_text(&two[..1], 4), " on gpu0 A (vulkan) ×4");
    }
}
