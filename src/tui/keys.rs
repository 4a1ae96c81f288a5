//! The one key table: it maps keys to actions, and it renders the footer and the help,
//! so that neither can drift from the bindings (ratatui's demo2 does the same).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Everything a person can ask of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    TogglePause,
    StepPhase,
    SlowMotion,
    CycleMode,
    MoreWorkers,
    FewerWorkers,
    CycleThreads,
    CycleAllReduce,
    CycleLink,
    SelectWorker,
    ToggleStraggler,
    CycleLrRule,
    RaiseLr,
    LowerLr,
    ToggleMomentum,
    Restart,
    ToggleBackend,
    KeepGhost,
    ToggleAxis,
    Help,
    Quit,
    /// Move the focus to the next (previous) panel: the one zoom shows, and the lesson
    /// text that the arrows scroll.
    FocusNext,
    FocusPrev,
    /// Show the focused panel alone on the whole screen (again: back), tmux's zoom.
    Zoom,
    ScrollUp,
    ScrollDown,
    PageUp,
    PageDown,
    // Lessons
    NextPage,
    PrevPage,
    /// A quiz answer, 1 to 4.
    Answer(u8),
    /// Back to the lesson menu.
    Back,
    // Home screen
    Up,
    Down,
    Enter,
}

pub struct Binding {
    pub key: KeyCode,
    /// How the key is written in the footer and the help.
    pub label: &'static str,
    pub action: Action,
    /// A few words for the footer.
    pub short: &'static str,
    /// One line for the help (empty: the key is named on another key's line, and has
    /// none of its own, so that the help fits a 120×40 screen).
    pub help: &'static str,
    /// Shown in the footer (the rest only in the help).
    pub footer: bool,
}

impl Binding {
    /// The help's line: the table's words, and for the keys that cycle or set a value,
    /// the values from the code that uses them (so that the help cannot drift).
    pub fn help_text(&self) -> String {
        use super::lab::{pace_words, LINKS, LR_FACTOR, MODES, MOMENTUM, PACES, STRAGGLER_FACTOR};
        let cycle = |names: Vec<String>| format!("{}: {}", self.help, names.join(" → "));
        match self.action {
            Action::CycleMode => cycle(MODES.iter().map(ToString::to_string).collect()),
            Action::CycleAllReduce => cycle(
                crate::session::AllReduceAlgo::ALL
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            ),
            Action::CycleLink => cycle(LINKS.iter().map(|(name, _)| name.to_string()).collect()),
            Action::SlowMotion => cycle(
                PACES
                    .iter()
                    .map(|p| p.map_or("full speed".to_string(), |r| format!("≈{}", pace_words(r))))
                    .collect(),
            ),
            Action::ToggleStraggler => format!("{} ({STRAGGLER_FACTOR}× its compute)", self.help),
            Action::ToggleMomentum => format!("{} (on: {MOMENTUM})", self.help),
            Action::RaiseLr => format!("{} × {LR_FACTOR} (from the next step)", self.help),
            Action::LowerLr => format!("{} ÷ {LR_FACTOR} (from the next step)", self.help),
            _ => self.help.to_string(),
        }
    }
}

const fn bind(
    key: KeyCode,
    label: &'static str,
    action: Action,
    short: &'static str,
    help: &'static str,
    footer: bool,
) -> Binding {
    Binding {
        key,
        label,
        action,
        short,
        help,
        footer,
    }
}

/// The lab's keys. `space`, `n`, `m`, `+`/`-`, `?` and `q` are fixed: lessons name them.
pub const LAB_KEYS: &[Binding] = &[
    bind(
        KeyCode::Char(' '),
        "space",
        Action::TogglePause,
        "pause",
        "pause / resume training",
        true,
    ),
    bind(
        KeyCode::Char('n'),
        "n",
        Action::StepPhase,
        "next phase",
        "step mode: run one more phase of every worker, then halt",
        true,
    ),
    bind(
        KeyCode::Char('z'),
        "z",
        Action::SlowMotion,
        "slow",
        "slow motion, time dilated (every phase, message and delay stretched alike)",
        true,
    ),
    bind(
        KeyCode::Char('m'),
        "m",
        Action::CycleMode,
        "mode",
        "cycle the training mode",
        true,
    ),
    bind(
        KeyCode::Char('+'),
        "+",
        Action::MoreWorkers,
        "workers",
        "one more worker (keeps the parameters)",
        true,
    ),
    bind(
        KeyCode::Char('-'),
        "-",
        Action::FewerWorkers,
        "",
        "one worker fewer (keeps the parameters)",
        false,
    ),
    bind(
        KeyCode::Char('t'),
        "t",
        Action::CycleThreads,
        "",
        "threads per worker (OMP_NUM_THREADS): 1 → 2 → 4 … → cores → 1; same numbers",
        false,
    ),
    bind(
        KeyCode::Char('a'),
        "a",
        Action::CycleAllReduce,
        "all-reduce",
        "cycle the all-reduce algorithm",
        true,
    ),
    bind(
        KeyCode::Char('l'),
        "l",
        Action::CycleLink,
        "link",
        "cycle the emulated link",
        true,
    ),
    bind(
        KeyCode::Char('w'),
        "w",
        Action::SelectWorker,
        "",
        "select the next worker (for the straggler key and the explanation)",
        false,
    ),
    bind(
        KeyCode::Char('s'),
        "s",
        Action::ToggleStraggler,
        "straggler",
        "make the selected worker slower, or normal again",
        true,
    ),
    bind(
        KeyCode::Char('r'),
        "r",
        Action::CycleLrRule,
        "",
        "cycle the LR rule: constant → linear scaling by the worker count",
        false,
    ),
    bind(KeyCode::Char('*'), "*", Action::RaiseLr, "", "learning rate", false),
    bind(KeyCode::Char('/'), "/", Action::LowerLr, "", "learning rate", false),
    bind(
        KeyCode::Char('M'),
        "M",
        Action::ToggleMomentum,
        "",
        "momentum on ↔ off (plain SGD), from the next step",
        false,
    ),
    bind(
        KeyCode::Char('R'),
        "R",
        Action::Restart,
        "",
        "restart from fresh parameters with the current settings",
        false,
    ),
    bind(
        KeyCode::Char('b'),
        "b",
        Action::ToggleBackend,
        "",
        "switch the backend, threads ↔ MPI ranks (mpirun), and restart",
        false,
    ),
    bind(
        KeyCode::Char('c'),
        "c",
        Action::KeepGhost,
        "",
        "keep the current curves as a faded ghost to compare the next run with",
        false,
    ),
    bind(
        KeyCode::Char('x'),
        "x",
        Action::ToggleAxis,
        "",
        "curves against time ↔ against samples processed",
        false,
    ),
    bind(
        KeyCode::Tab,
        "tab",
        Action::FocusNext,
        "",
        "focus the next panel (shift-tab: the previous one)",
        false,
    ),
    // (no line of its own in the help: tab's names it)
    bind(KeyCode::BackTab, "shift-tab", Action::FocusPrev, "", "", false),
    bind(
        KeyCode::Char('f'),
        "f",
        Action::Zoom,
        "zoom",
        "zoom the focused panel to the whole screen, and back (also enter)",
        true,
    ),
    bind(KeyCode::Enter, "enter", Action::Zoom, "", "… the same as f", false),
    bind(
        KeyCode::Up,
        "↑",
        Action::ScrollUp,
        "",
        "scroll the lesson text up (↓ down, PgUp / PgDn a page)",
        false,
    ),
    bind(KeyCode::Down, "↓", Action::ScrollDown, "", "… down", false),
    bind(KeyCode::PageUp, "PgUp", Action::PageUp, "", "… a page up", false),
    bind(KeyCode::PageDown, "PgDn", Action::PageDown, "", "… a page down", false),
    bind(
        KeyCode::Char(']'),
        "]",
        Action::NextPage,
        "",
        "lesson: next page",
        false,
    ),
    bind(
        KeyCode::Char('['),
        "[",
        Action::PrevPage,
        "",
        "lesson: previous page",
        false,
    ),
    bind(
        KeyCode::Char('1'),
        "1",
        Action::Answer(1),
        "",
        "lesson: answer the quiz with choice 1",
        false,
    ),
    bind(KeyCode::Char('2'), "2", Action::Answer(2), "", "… choice 2", false),
    bind(KeyCode::Char('3'), "3", Action::Answer(3), "", "… choice 3", false),
    bind(KeyCode::Char('4'), "4", Action::Answer(4), "", "… choice 4", false),
    bind(
        KeyCode::Esc,
        "esc",
        Action::Back,
        "",
        "out of a zoomed panel; else back to the lesson menu (progress is saved)",
        false,
    ),
    bind(
        KeyCode::Char('?'),
        "?",
        Action::Help,
        "help",
        "show / hide this help",
        true,
    ),
    bind(
        KeyCode::Char('q'),
        "q",
        Action::Quit,
        "quit",
        "quit (also Ctrl-C); the terminal is restored",
        true,
    ),
];

pub const HOME_KEYS: &[Binding] = &[
    bind(KeyCode::Up, "↑", Action::Up, "", "previous item", false),
    bind(KeyCode::Down, "↓", Action::Down, "", "next item", false),
    bind(
        KeyCode::Enter,
        "enter",
        Action::Enter,
        "open",
        "open the selected item",
        true,
    ),
    bind(
        KeyCode::Char('?'),
        "?",
        Action::Help,
        "help",
        "show / hide this help",
        true,
    ),
    bind(KeyCode::Char('q'), "q", Action::Quit, "quit", "quit", true),
];

/// The keys the help takes while it is shown: esc closes it, the arrows scroll it (every
/// other key goes to the screen beneath, as its table says).
pub const HELP_KEYS: &[Binding] = &[
    bind(KeyCode::Esc, "esc", Action::Back, "close", "close this help", true),
    bind(KeyCode::Up, "↑", Action::ScrollUp, "", "scroll the help up", false),
    bind(KeyCode::Down, "↓", Action::ScrollDown, "", "… down", false),
    bind(KeyCode::PageUp, "PgUp", Action::PageUp, "", "… a page up", false),
    bind(KeyCode::PageDown, "PgDn", Action::PageDown, "", "… a page down", false),
];

/// The action a key asks for in a table; Ctrl-C always quits.
pub fn action(table: &[Binding], key: KeyEvent) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    table.iter().find(|b| b.key == key.code).map(|b| b.action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_lab_binding_reaches_its_action_and_keys_are_unique() {
        let mut seen = HashSet::new();
        for b in LAB_KEYS {
            assert!(seen.insert(b.key), "{} is bound twice", b.label);
            let ev = KeyEvent::new(b.key, KeyModifiers::NONE);
            assert_eq!(action(LAB_KEYS, ev), Some(b.action), "{}", b.label);
        }
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(action(LAB_KEYS, ctrl_c), Some(Action::Quit));
    }

    #[test]
    fn the_help_takes_esc_and_the_arrows_and_leaves_the_rest_to_the_screen() {
        let press = |code| KeyEvent::new(code, KeyModifiers::NONE);
        assert_eq!(action(HELP_KEYS, press(KeyCode::Esc)), Some(Action::Back));
        assert_eq!(action(HELP_KEYS, press(KeyCode::PageDown)), Some(Action::PageDown));
        assert_eq!(action(HELP_KEYS, press(KeyCode::Char('?'))), None);
        assert_eq!(action(HELP_KEYS, press(KeyCode::Char('q'))), None);
    }

    #[test]
    fn the_fixed_keys_are_where_lessons_say() {
        let find = |c: char| action(LAB_KEYS, KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
        assert_eq!(find(' '), Some(Action::TogglePause));
        assert_eq!(find('n'), Some(Action::StepPhase));
        assert_eq!(find('m'), Some(Action::CycleMode));
        assert_eq!(find('+'), Some(Action::MoreWorkers));
        assert_eq!(find('-'), Some(Action::FewerWorkers));
        assert_eq!(find('?'), Some(Action::Help));
        assert_eq!(find('q'), Some(Action::Quit));
    }
}
