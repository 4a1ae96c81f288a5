//! The lab: a terminal front end on the session. An Elm loop: one `App` model, actions
//! from one key table (`keys.rs`), `App::update`, and a pure `view::render`.
//! Each frame drains the event stream without blocking, draws, and polls keys with a
//! timeout, so the UI never blocks training and training never blocks the UI.

mod collective;
mod curves;
pub mod demo;
pub mod digits;
mod explain;
pub mod keys;
pub mod lab;
pub mod lesson;
mod numbers;
pub mod theme;
mod timeline;
pub mod view;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{self, Event as TermEvent, KeyEvent, KeyEventKind};

use crate::lesson::{Lesson, Panel, ProgressStore};
use crate::session::{Dataset, ExitError, Experiment};
use keys::{Action, HELP_KEYS, HOME_KEYS, LAB_KEYS};
pub use lab::Lab;
pub use lesson::LessonView;
use theme::Theme;

/// How long one frame waits for a key: about 30 frames a second.
const FRAME: Duration = Duration::from_millis(33);

/// The free lab's line on the home screen (the lessons follow it, then Quit).
pub const FREE_LAB: (&str, &str) = (
    "Free lab",
    "train a real network on 4 workers and change the experiment while it runs",
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Home,
    Lab,
}

pub struct App {
    pub screen: Screen,
    pub help: bool,
    /// Lines of the help scrolled past (the view keeps it within the help's length).
    pub help_scroll: std::cell::Cell<u16>,
    pub quit: bool,
    pub lab: Option<Lab>,
    pub home_selected: usize,
    pub theme: Theme,
    /// The experiment the free lab starts with.
    pub base: Experiment,
    pub data: Arc<Dataset>,
    /// The course (empty, with `lessons_error` set, when it could not be read).
    pub lessons: Vec<Lesson>,
    pub lessons_error: Option<String>,
    pub progress: ProgressStore,
    /// The lesson being followed beside the lab.
    pub lesson: Option<LessonView>,
    /// How an instructor wants every page's run to open (over what the page says).
    pub opening: Opening,
    /// Where tab put the focus (None: nowhere yet).
    pub focus: Option<Focus>,
    /// The focused panel fills the screen (f or enter; again, or esc, to go back).
    pub zoomed: bool,
}

/// What the focus can be on: the lesson text, or one panel of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Lesson,
    Panel(Panel),
}

/// The lab's panels in the order tab visits them.
pub const PANELS: [Panel; 6] = [
    Panel::Timeline,
    Panel::Collective,
    Panel::Curves,
    Panel::Numbers,
    Panel::Explain,
    Panel::Digits,
];

/// Lines the arrows scroll the lesson text by (PgUp/PgDn: a page).
const SCROLL_PAGE: u16 = 10;

/// How runs open when an instructor says so on the command line: paused, at a pace.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Opening {
    pub paused: bool,
    pub slow: Option<f64>,
}

/// What the home screen lists: the free lab, each lesson, quit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeItem {
    FreeLab,
    Lesson(usize),
    Quit,
}

impl App {
    pub fn new(screen: Screen, lab: Option<Lab>, base: Experiment, data: Arc<Dataset>, theme: Theme) -> App {
        let (lessons, lessons_error) = match crate::lesson::load_from(None) {
            Ok(l) => (l, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        App {
            screen,
            help: false,
            help_scroll: std::cell::Cell::new(0),
            quit: false,
            lab,
            home_selected: 0,
            theme,
            base,
            data,
            lessons,
            lessons_error,
            progress: ProgressStore {
                path: None,
                progress: Default::default(),
                warning: None,
            },
            lesson: None,
            opening: Opening::default(),
            focus: None,
            zoomed: false,
        }
    }

    /// What a zoom (or a narrow lesson screen) shows: the focus, else the first lab panel
    /// the lesson page points at, else the timeline.
    pub fn shown(&self) -> Focus {
        self.focus.unwrap_or_else(|| {
            let pointed = self
                .lesson
                .as_ref()
                .and_then(|v| v.current().point_at.iter().copied().find(|p| PANELS.contains(p)));
            Focus::Panel(pointed.unwrap_or(Panel::Timeline))
        })
    }

    /// Moves the focus `by` places along the lesson text (when one is open) and the panels.
    fn move_focus(&mut self, by: isize) {
        let mut order: Vec<Focus> = PANELS.iter().map(|&p| Focus::Panel(p)).collect();
        if self.lesson.is_some() {
            order.insert(0, Focus::Lesson);
        }
        let now = self.shown();
        if self.focus.is_none() {
            // The first tab shows where the focus is (what a zoom would show).
            self.focus = Some(now);
            return;
        }
        let i = order.iter().position(|&f| f == now).unwrap_or(0) as isize;
        let n = order.len() as isize;
        self.focus = Some(order[((i + by) % n + n) as usize % n as usize]);
    }

    pub fn home_items(&self) -> Vec<HomeItem> {
        let mut items = vec![HomeItem::FreeLab];
        items.extend((0..self.lessons.len()).map(HomeItem::Lesson));
        items.push(HomeItem::Quit);
        items
    }

    /// Reads what the run produced since the last frame.
    pub fn tick(&mut self) {
        if let Some(lab) = self.lab.as_mut() {
            lab.drain();
            if let Some(v) = self.lesson.as_mut() {
                v.refresh_checks(lab);
            }
        }
    }

    /// The data set `exp` trains on (loaded unless it is the one at hand).
    fn data_for(&mut self, exp: &Experiment) -> Result<Arc<Dataset>, String> {
        if self.data.kind != exp.dataset {
            self.data = Arc::new(Dataset::load(exp.dataset).map_err(|e| e.to_string())?);
        }
        Ok(Arc::clone(&self.data))
    }

    /// Starts `exp` in the lab (paused when asked); a failure shows in the lab.
    fn start_lab(&mut self, exp: Experiment, paused: bool) {
        let started = self
            .data_for(&exp)
            .and_then(|data| Lab::start(exp.clone(), data, paused));
        self.lab = Some(match started {
            Ok(lab) => lab,
            Err(e) => {
                let mut lab = Lab::replay(exp, Arc::clone(&self.data));
                lab.error = Some(e);
                lab
            }
        });
        self.screen = Screen::Lab;
    }

    /// Opens lesson `index` (0-based) where the learner left it.
    pub fn open_lesson(&mut self, index: usize) {
        let Some(lesson) = self.lessons.get(index).cloned() else {
            return;
        };
        let page = self
            .progress
            .progress
            .lessons
            .get(&lesson.id)
            .map_or(0, |p| p.page.min(lesson.pages.len() - 1));
        let view = LessonView::new(lesson, page);
        let p = view.current().clone();
        self.lesson = Some(view);
        self.start_page_run(&p);
        if let (Some(lab), Some(axis)) = (self.lab.as_mut(), p.axis) {
            lab.axis = Some(axis);
        }
        self.save_page();
    }

    /// Starts a page's run, as the page and the instructor's opening say.
    fn start_page_run(&mut self, page: &crate::lesson::Page) {
        let mut exp = page.experiment.clone();
        if let Some(slow) = self.opening.slow.or(page.slow) {
            exp.slow = slow;
        }
        self.start_lab(exp, page.start_paused || self.opening.paused);
    }

    /// A page that goes on with the run before it may still pause it or set its pace.
    fn continue_page_run(&mut self, page: &crate::lesson::Page) {
        let Some(lab) = self.lab.as_mut() else { return };
        if let Some(slow) = page.slow.filter(|_| self.opening.slow.is_none()) {
            if lab.exp.slow != slow {
                lab.set_pace(slow, None);
            }
        }
        if page.start_paused && !(lab.paused || lab.stepping) {
            lab.update(Action::TogglePause);
        }
    }

    /// Shows page `page` of the lesson; a page with an experiment starts its run.
    fn go_to_page(&mut self, page: usize) {
        let Some(v) = self.lesson.as_mut() else { return };
        if page >= v.lesson.pages.len() || page == v.page {
            return;
        }
        v.page = page;
        v.reset_page();
        let p = v.current().clone();
        if p.starts_run {
            self.start_page_run(&p);
        } else {
            self.continue_page_run(&p);
        }
        if let (Some(lab), Some(axis)) = (self.lab.as_mut(), p.axis) {
            lab.axis = Some(axis);
        }
        self.save_page();
    }

    /// Records the page reached (and the lesson done when it is the last).
    fn save_page(&mut self) {
        let Some(v) = &self.lesson else { return };
        let (id, page, last) = (v.lesson.id.clone(), v.page, v.lesson.pages.len() - 1);
        let entry = self.progress.lesson(&id);
        entry.page = page;
        entry.visited.insert(page);
        if page == last {
            entry.completed = true;
        }
        let _ = self.progress.save();
    }

    pub fn handle_key(&mut self, key: KeyEvent) {
        if key.kind != KeyEventKind::Press {
            return;
        }
        if self.help {
            // The help takes esc (to close it) and the arrows (to scroll it): its table.
            let scroll = &self.help_scroll;
            match keys::action(HELP_KEYS, key) {
                Some(Action::Back) => self.help = false,
                Some(Action::ScrollUp) => scroll.set(scroll.get().saturating_sub(1)),
                Some(Action::ScrollDown) => scroll.set(scroll.get() + 1),
                Some(Action::PageUp) => scroll.set(scroll.get().saturating_sub(SCROLL_PAGE)),
                Some(Action::PageDown) => scroll.set(scroll.get() + SCROLL_PAGE),
                _ => {}
            }
            if HELP_KEYS.iter().any(|b| b.key == key.code) {
                return;
            }
        }
        let table = if self.screen == Screen::Lab {
            LAB_KEYS
        } else {
            HOME_KEYS
        };
        if let Some(action) = keys::action(table, key) {
            self.update(action);
        }
    }

    pub fn update(&mut self, action: Action) {
        match (self.screen, action) {
            (_, Action::Help) => self.help = !self.help,
            (_, Action::Quit) => self.quit = true,
            (Screen::Home, Action::Up) => self.home_selected = self.home_selected.saturating_sub(1),
            (Screen::Home, Action::Down) => {
                self.home_selected = (self.home_selected + 1).min(self.home_items().len() - 1)
            }
            (Screen::Home, Action::Enter) => {
                match self.home_items()[self.home_selected.min(self.home_items().len() - 1)] {
                    HomeItem::FreeLab => {
                        self.lesson = None;
                        self.start_lab(self.base.clone(), false);
                    }
                    HomeItem::Lesson(i) => self.open_lesson(i),
                    HomeItem::Quit => self.quit = true,
                }
            }
            (Screen::Lab, Action::Back) if self.zoomed => self.zoomed = false,
            (Screen::Lab, Action::Back) => {
                self.lab = None; // stops the run
                self.lesson = None;
                self.focus = None;
                self.screen = Screen::Home;
            }
            (Screen::Lab, Action::FocusNext) => self.move_focus(1),
            (Screen::Lab, Action::FocusPrev) => self.move_focus(-1),
            (Screen::Lab, Action::Zoom) => self.zoomed = !self.zoomed,
            (Screen::Lab, Action::ScrollUp | Action::ScrollDown | Action::PageUp | Action::PageDown) => {
                if let Some(v) = self.lesson.as_mut() {
                    let by = match action {
                        Action::ScrollUp => -1,
                        Action::ScrollDown => 1,
                        Action::PageUp => -(SCROLL_PAGE as i32),
                        _ => SCROLL_PAGE as i32,
                    };
                    v.scroll_by(by);
                }
            }
            (Screen::Lab, Action::NextPage) => {
                let next = self.lesson.as_ref().map(|v| v.page + 1);
                if let Some(p) = next {
                    self.go_to_page(p);
                }
            }
            (Screen::Lab, Action::PrevPage) => {
                let prev = self.lesson.as_ref().and_then(|v| v.page.checked_sub(1));
                if let Some(p) = prev {
                    self.go_to_page(p);
                }
            }
            (Screen::Lab, Action::Answer(choice)) => {
                if let Some(v) = self.lesson.as_mut() {
                    if let Some((q, right)) = v.answer(choice as usize) {
                        let key = format!("{}:{q}", v.page);
                        let id = v.lesson.id.clone();
                        self.progress.lesson(&id).quiz.insert(key, right);
                        let _ = self.progress.save();
                    }
                }
            }
            (Screen::Lab, action) => {
                if let Some(lab) = self.lab.as_mut() {
                    let before = lab.exp.clone();
                    lab.update(action);
                    if let Some(v) = self.lesson.as_mut() {
                        let did = lesson::detect(action, &before, &lab.exp);
                        let newly = v.observe(&did);
                        if !newly.is_empty() {
                            let (id, page) = (v.lesson.id.clone(), v.page);
                            let entry = self.progress.lesson(&id);
                            for i in newly {
                                entry.tries_done.insert(format!("{page}:{i}"));
                            }
                            let _ = self.progress.save();
                        }
                    }
                }
            }
            (Screen::Home, _) => {}
        }
    }
}

/// Where the TUI opens.
pub enum Start {
    Home(Experiment),
    Lab {
        exp: Experiment,
        paused: bool,
    },
    /// Lesson `number` (1-based) of `lessons` (read from `dir`, or the built-in ones).
    Lesson {
        lessons: Vec<Lesson>,
        number: usize,
        dir: Option<std::path::PathBuf>,
        opening: Opening,
    },
}

/// Runs the TUI until the user quits. The terminal is restored on return, on panic
/// (ratatui's hook) and on Ctrl-C (a key like any other in raw mode).
pub fn run(start: Start) -> Result<(), ExitError> {
    if !std::io::stdout().is_terminal() {
        return Err(ExitError::usage(
            "the lab needs a terminal and stdout is not one: for a headless run use `ddlab run` with the same flags",
        ));
    }
    let (exp, screen, paused, lesson) = match start {
        Start::Home(e) => (e, Screen::Home, false, None),
        Start::Lab { exp, paused } => (exp, Screen::Lab, paused, None),
        Start::Lesson {
            lessons,
            number,
            dir: _,
            opening,
        } => (
            Experiment::default(),
            Screen::Home,
            false,
            Some((lessons, number, opening)),
        ),
    };
    exp.validate().map_err(|e| ExitError::usage(e.to_string()))?;
    let data = Arc::new(Dataset::load(exp.dataset).map_err(|e| ExitError::usage(e.to_string()))?);
    exp.check_against(data.train_len())
        .map_err(|e| ExitError::usage(e.to_string()))?;
    let lab = match screen {
        Screen::Lab => Some(Lab::start(exp.clone(), Arc::clone(&data), paused).map_err(ExitError::usage)?),
        Screen::Home => None,
    };
    let mut app = App::new(screen, lab, exp, data, Theme::from_env());
    app.progress = ProgressStore::open_default();
    if let Some((lessons, number, opening)) = lesson {
        app.lessons = lessons;
        app.lessons_error = None;
        app.opening = opening;
        app.open_lesson(number - 1);
    }

    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        while !app.quit {
            app.tick();
            terminal.draw(|f| view::draw(f, &app))?;
            if event::poll(FRAME)? {
                match event::read()? {
                    TermEvent::Key(key) => app.handle_key(key),
                    TermEvent::Resize(..) => {} // the next draw uses the new size
                    _ => {}
                }
            }
        }
        Ok(())
    })();
    ratatui::restore();
    // A save that failed was said on the screen; one that failed just before the person
    // quit was not seen there: say it where it stays.
    if let Some(warning) = app.progress.warning.take() {
        crate::session::spmd::say(&warning);
    }
    drop(app); // stops the run (sessions stop their engines as they drop)
    result.map_err(|e| ExitError::failure(format!("the terminal failed: {e}")))
}
