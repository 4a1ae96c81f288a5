//! A lesson beside the live lab: the page's narrative, the panels to look at, "try this"
//! prompts that tick when the learner does the thing, live checks, and quiz questions
//! with immediate feedback.

use std::time::{Duration, Instant};

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget, Wrap};

use super::keys::Action;
use super::lab::Lab;
use super::theme::Theme;
use crate::lesson::{Lesson, LessonAction, Page, Panel};
use crate::session::{Experiment, Mode, Summary};

/// How often live checks are re-evaluated.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The lesson being followed.
pub struct LessonView {
    pub lesson: Lesson,
    pub page: usize,
    /// Prompts of this page the learner has done.
    pub tries_done: Vec<bool>,
    /// The choice given to each quiz question of this page (1-based).
    pub answers: Vec<Option<usize>>,
    /// Live checks of this page: the metric's value, when the run has it.
    pub checks: Vec<Option<f64>>,
    checked_at: Option<Instant>,
    /// Lines of the page scrolled past (the arrows move it).
    pub scroll: u16,
    /// How far the page could scroll when it was last drawn (the view measures it).
    pub max_scroll: std::cell::Cell<u16>,
}

impl LessonView {
    pub fn new(lesson: Lesson, page: usize) -> LessonView {
        let page = page.min(lesson.pages.len() - 1);
        let mut v = LessonView {
            lesson,
            page,
            tries_done: Vec::new(),
            answers: Vec::new(),
            checks: Vec::new(),
            checked_at: None,
            scroll: 0,
            max_scroll: std::cell::Cell::new(u16::MAX),
        };
        v.reset_page();
        v
    }

    pub fn current(&self) -> &Page {
        &self.lesson.pages[self.page]
    }

    /// Clears the per-page state for the page now shown.
    pub fn reset_page(&mut self) {
        let p = &self.lesson.pages[self.page];
        self.tries_done = vec![false; p.tries.len()];
        self.answers = vec![None; p.quiz.len()];
        self.checks = vec![None; p.checks.len()];
        self.checked_at = None;
        self.scroll = 0;
        self.max_scroll.set(u16::MAX);
    }

    /// Scrolls the page `by` lines (down when positive), as far as it goes.
    pub fn scroll_by(&mut self, by: i32) {
        let max = i32::from(self.max_scroll.get());
        self.scroll = (i32::from(self.scroll) + by).clamp(0, max) as u16;
    }

    /// Marks the prompts `did` satisfies; returns the indices newly done.
    pub fn observe(&mut self, did: &[LessonAction]) -> Vec<usize> {
        let mut newly = Vec::new();
        for (i, t) in self.lesson.pages[self.page].tries.iter().enumerate() {
            if !self.tries_done[i] && did.contains(&t.action) {
                self.tries_done[i] = true;
                newly.push(i);
            }
        }
        newly
    }

    /// Answers the first unanswered question of the page with `choice` (1-based);
    /// returns (question index, right?) when there was one to answer.
    pub fn answer(&mut self, choice: usize) -> Option<(usize, bool)> {
        let page = &self.lesson.pages[self.page];
        let q = self.answers.iter().position(Option::is_none)?;
        if choice == 0 || choice > page.quiz[q].choices.len() {
            return None;
        }
        self.answers[q] = Some(choice);
        Some((q, choice == page.quiz[q].answer))
    }

    /// Re-evaluates the live checks now and then.
    pub fn refresh_checks(&mut self, lab: &Lab) {
        if self.checks.is_empty() || self.checked_at.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return;
        }
        self.checked_at = Some(Instant::now());
        let summary = serde_json::to_value(Summary::new(&lab.exp, lab.state())).unwrap_or_default();
        for (i, c) in self.lesson.pages[self.page].checks.iter().enumerate() {
            self.checks[i] = match &summary[&c.metric] {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
                _ => None,
            };
        }
    }
}

/// What the learner did, judged from the key and the settings before and after it.
pub fn detect(action: Action, before: &Experiment, after: &Experiment) -> Vec<LessonAction> {
    let mut did = Vec::new();
    match action {
        Action::StepPhase => did.push(LessonAction::StepPhase),
        Action::TogglePause => did.push(LessonAction::Pause),
        Action::SlowMotion => did.push(LessonAction::SlowMotion),
        Action::KeepGhost => did.push(LessonAction::KeepGhost),
        Action::Restart => did.push(LessonAction::Restart),
        _ => {}
    }
    if before.mode != after.mode {
        did.push(match after.mode {
            Mode::Sync => LessonAction::SwitchToSync,
            Mode::Async => LessonAction::SwitchToAsync,
            Mode::Ssp(_) => LessonAction::SwitchToSsp,
            Mode::Backup(_) => LessonAction::SwitchToBackup,
            Mode::Local(_) => LessonAction::SwitchToLocal,
        });
    }
    if after.workers > before.workers {
        did.push(LessonAction::AddWorker);
    } else if after.workers < before.workers {
        did.push(LessonAction::RemoveWorker);
    }
    if before.threads != after.threads {
        did.push(LessonAction::ChangeThreads);
    }
    if before.allreduce != after.allreduce {
        did.push(LessonAction::ChangeAllreduce);
    }
    if before.link != after.link {
        did.push(LessonAction::ChangeLink);
    }
    if after.stragglers.len() > before.stragglers.len() {
        did.push(LessonAction::AddStraggler);
    } else if after.stragglers.len() < before.stragglers.len() {
        did.push(LessonAction::RemoveStraggler);
    }
    if before.lr_scaling != after.lr_scaling && after.lr_scaling == crate::session::LrScaling::Linear {
        did.push(LessonAction::LinearLrScaling);
    }
    if after.lr > before.lr {
        did.push(LessonAction::RaiseLr);
    } else if after.lr < before.lr {
        did.push(LessonAction::LowerLr);
    }
    if before.momentum > 0.0 && after.momentum == 0.0 {
        did.push(LessonAction::MomentumOff);
    } else if before.momentum == 0.0 && after.momentum > 0.0 {
        did.push(LessonAction::MomentumOn);
    }
    did
}

fn panel_name(p: Panel) -> &'static str {
    match p {
        Panel::Header => "the header (top line)",
        Panel::Timeline => "the timeline (top left)",
        Panel::Collective => "the collective view (left, below the timeline)",
        Panel::Curves => "the curves (top right)",
        Panel::Numbers => "the numbers (right, below the curves)",
        Panel::Explain => "the explanation (bottom)",
        Panel::Digits => "the digits (bottom right)",
    }
}

/// Markdown, lightly: paragraphs reflowed (the pane wraps them), headings bold, list
/// items on lines of their own, indented code in the key colour, emphasis marks dropped.
fn markdown<'a>(text: &'a str, theme: &Theme) -> Vec<Line<'a>> {
    let mut out: Vec<Line> = Vec::new();
    let mut para = String::new();
    let flush = |para: &mut String, out: &mut Vec<Line<'a>>| {
        if !para.is_empty() {
            out.push(Line::raw(std::mem::take(para).replace('*', "")));
        }
    };
    for l in text.lines() {
        let trimmed = l.trim_start();
        let list_item = trimmed.starts_with("- ")
            || trimmed
                .split_once(". ")
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if let Some(h) = l.strip_prefix("# ").or_else(|| l.strip_prefix("## ")) {
            flush(&mut para, &mut out);
            out.push(Line::styled(h, theme.title()));
        } else if l.starts_with("    ") && para.is_empty() {
            out.push(Line::styled(l, theme.key()));
        } else if l.trim().is_empty() {
            flush(&mut para, &mut out);
            out.push(Line::raw(""));
        } else if list_item {
            flush(&mut para, &mut out);
            para.push_str(trimmed);
        } else {
            if !para.is_empty() {
                para.push(' ');
            }
            para.push_str(trimmed);
        }
    }
    flush(&mut para, &mut out);
    out
}

pub fn render(v: &LessonView, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let page = v.current();
    let mut lines: Vec<Line> = markdown(&page.text, theme);
    if !page.point_at.is_empty() {
        lines.push(Line::raw(""));
        let names: Vec<&str> = page.point_at.iter().map(|&p| panel_name(p)).collect();
        lines.push(Line::from(vec![
            Span::styled("Look at: ", theme.warn()),
            Span::raw(names.join("; ")),
        ]));
    }
    for (i, t) in page.tries.iter().enumerate() {
        lines.push(Line::raw(""));
        let (mark, style) = if v.tries_done[i] {
            ("☑ done: ", theme.good())
        } else {
            ("☐ try this: ", theme.warn())
        };
        lines.push(Line::from(vec![
            Span::styled(mark, style),
            Span::raw(t.prompt.as_str()),
        ]));
    }
    for (i, c) in page.checks.iter().enumerate() {
        let (mark, style, now) = match v.checks[i] {
            Some(x) if c.op.holds(x, c.value) => ("✓ ", theme.good(), format!(" (now {x:.3})")),
            Some(x) => ("… ", theme.dim(), format!(" (now {x:.3})")),
            None => ("… ", theme.dim(), String::new()),
        };
        lines.push(Line::from(vec![
            Span::styled(mark, style),
            Span::raw(c.text.as_str()),
            Span::styled(now, theme.dim()),
        ]));
    }
    for (q, quiz) in page.quiz.iter().enumerate() {
        lines.push(Line::raw(""));
        lines.push(Line::styled(format!("Quiz: {}", quiz.question), theme.title()));
        for (c, choice) in quiz.choices.iter().enumerate() {
            let style = match v.answers[q] {
                Some(_) if c + 1 == quiz.answer => theme.good(),
                Some(a) if a == c + 1 => theme.bad(),
                _ => ratatui::style::Style::default(),
            };
            lines.push(Line::styled(format!("  {}. {choice}", c + 1), style));
        }
        match v.answers[q] {
            Some(a) if a == quiz.answer => lines.push(Line::styled(format!("Right. {}", quiz.explain), theme.good())),
            Some(_) => lines.push(Line::styled(
                format!("Not quite: the answer is {}. {}", quiz.answer, quiz.explain),
                theme.bad(),
            )),
            None if v.answers[..q].iter().all(Option::is_some) => {
                lines.push(Line::styled("press 1–4 to answer", theme.dim()))
            }
            None => {}
        }
    }
    // (the page number first: a narrow pane cuts the title's end)
    let title = format!(
        " page {}/{} · lesson {} · {}: {} ",
        v.page + 1,
        v.lesson.pages.len(),
        v.lesson.number,
        v.lesson.title,
        page.title
    );
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(title, theme.title()));
    let inner = block.inner(area);
    block.render(area, buf);
    // The keys stay at the bottom, whatever the scroll; the text scrolls above them.
    let text = Paragraph::new(lines).wrap(Wrap { trim: false });
    let keys_line = |more: &'static str| {
        Paragraph::new(Line::from(vec![
            Span::styled(more, theme.warn()),
            Span::styled(
                "↑↓ PgUp PgDn scroll · [ ] pages · 1–4 answer · tab panels · esc lessons",
                theme.dim(),
            ),
        ]))
        .wrap(Wrap { trim: true })
    };
    let widest = keys_line("↑↓ more above and below · ").line_count(inner.width) as u16;
    let text_h = inner.height.saturating_sub(widest);
    let total = text.line_count(inner.width) as u16;
    let max = total.saturating_sub(text_h);
    v.max_scroll.set(max);
    let scroll = v.scroll.min(max);
    text.scroll((scroll, 0)).render(
        Rect {
            height: text_h,
            ..inner
        },
        buf,
    );
    let more = match (scroll > 0, scroll < max) {
        (false, true) => "↓ more below · ",
        (true, true) => "↑↓ more above and below · ",
        (true, false) => "↑ more above · ",
        (false, false) => "",
    };
    keys_line(more).render(
        Rect {
            y: inner.y + text_h,
            height: inner.height - text_h,
            ..inner
        },
        buf,
    );
}
