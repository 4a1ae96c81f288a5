//! The lab: a terminal front end on the session. An Elm loop: one `App` model, actions
//! from one key table (`keys.rs`), `App::update`, and a pure `view::render`.
//! Each frame drains the event stream without blocking, draws, and polls keys with a
//! timeout, so the UI never blocks training and training never blocks the UI.

pub mod app;
mod collective;
mod curves;
pub mod demo;
pub mod digits;
mod explain;
pub mod keys;
mod numbers;
pub mod theme;
mod timeline;
pub mod view;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind};

use crate::cli::CliError;
use crate::config::Experiment;
use crate::data::Dataset;
pub use app::Lab;
use keys::{Action, HOME_KEYS, LAB_KEYS};
use theme::Theme;

/// How long one frame waits for a key: about 30 frames a second.
const FRAME: Duration = Duration::from_millis(33);

/// The home screen's items: name and a line about it.
pub const HOME_ITEMS: [(&str, &str); 3] = [
    (
        "Free lab",
        "train a real network on 4 workers and change the experiment while it runs",
    ),
    (
        "Lessons",
        "the numbered course is not written yet; start with the free lab",
    ),
    ("Quit", "leave ddlab"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Home,
    Lab,
}

pub struct App {
    pub screen: Screen,
    pub help: bool,
    pub quit: bool,
    pub lab: Option<Lab>,
    pub home_selected: usize,
    pub theme: Theme,
    /// The experiment the free lab starts with.
    pub base: Experiment,
    pub data: Arc<Dataset>,
}

impl App {
    pub fn new(screen: Screen, lab: Option<Lab>, base: Experiment, data: Arc<Dataset>, theme: Theme) -> App {
        App {
            screen,
            help: false,
            quit: false,
            lab,
            home_selected: 0,
            theme,
            base,
            data,
        }
    }

    /// Reads what the run produced since the last frame.
    pub fn tick(&mut self) {
        if let Some(lab) = self.lab.as_mut() {
            lab.drain();
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent) {
        if key.kind != KeyEventKind::Press {
            return;
        }
        if self.help && key.code == KeyCode::Esc {
            self.help = false;
            return;
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
            (Screen::Home, Action::Down) => self.home_selected = (self.home_selected + 1).min(HOME_ITEMS.len() - 1),
            (Screen::Home, Action::Enter) => match self.home_selected {
                0 => match Lab::start(self.base.clone(), Arc::clone(&self.data)) {
                    Ok(lab) => {
                        self.lab = Some(lab);
                        self.screen = Screen::Lab;
                    }
                    Err(e) => {
                        // Cannot happen with the built-in defaults; shown, not panicked on.
                        let mut lab = Lab::replay(self.base.clone(), Arc::clone(&self.data));
                        lab.error = Some(e);
                        self.lab = Some(lab);
                        self.screen = Screen::Lab;
                    }
                },
                1 => {}
                _ => self.quit = true,
            },
            (Screen::Lab, action) => {
                if let Some(lab) = self.lab.as_mut() {
                    lab.update(action);
                }
            }
            (Screen::Home, _) => {}
        }
    }
}

/// Where the TUI opens.
pub enum Start {
    Home(Experiment),
    Lab(Experiment),
}

/// Runs the TUI until the user quits. The terminal is restored on return, on panic
/// (ratatui's hook) and on Ctrl-C (a key like any other in raw mode).
pub fn run(start: Start) -> Result<(), CliError> {
    if !std::io::stdout().is_terminal() {
        return Err(CliError::usage(
            "the lab needs a terminal and stdout is not one: for a headless run use `ddlab run` with the same flags",
        ));
    }
    let (exp, screen) = match start {
        Start::Home(e) => (e, Screen::Home),
        Start::Lab(e) => (e, Screen::Lab),
    };
    exp.validate().map_err(|e| CliError::usage(e.to_string()))?;
    let data = Arc::new(Dataset::load(exp.dataset).map_err(|e| CliError::usage(e.to_string()))?);
    exp.check_against(data.train_len())
        .map_err(|e| CliError::usage(e.to_string()))?;
    let lab = match screen {
        Screen::Lab => Some(Lab::start(exp.clone(), Arc::clone(&data)).map_err(CliError::usage)?),
        Screen::Home => None,
    };
    let mut app = App::new(screen, lab, exp, data, Theme::from_env());

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
    drop(app); // stops the run (sessions stop their engines as they drop)
    result.map_err(|e| CliError::failure(format!("the terminal failed: {e}")))
}
