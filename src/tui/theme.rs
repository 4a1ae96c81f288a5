//! Named styles: render code never names a colour. `NO_COLOR` turns colour off, and then
//! phases are told apart by their letters.

use ratatui::style::{Color, Modifier, Style};

use crate::session::Phase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    /// Colour unless `NO_COLOR` is set (to anything non-empty, per no-color.org).
    pub fn from_env() -> Theme {
        Theme {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    pub fn title(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    pub fn dim(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default().add_modifier(Modifier::DIM)
        }
    }
    pub fn key(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }
    pub fn good(&self) -> Style {
        self.fg(Color::Green)
    }
    pub fn bad(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow)
    }
    pub fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    pub fn loss(&self) -> Style {
        self.fg(Color::LightRed)
    }
    pub fn accuracy(&self) -> Style {
        self.fg(Color::LightGreen)
    }
    pub fn ghost(&self) -> Style {
        self.dim()
    }

    /// The colour of a phase on the timeline.
    pub fn phase(&self, phase: Phase) -> Style {
        self.fg(match phase {
            Phase::Forward => Color::Blue,
            Phase::Backward => Color::Magenta,
            Phase::AllReduce => Color::Yellow,
            Phase::Update => Color::Green,
            Phase::Pull => Color::Cyan,
            Phase::Push => Color::LightYellow,
            Phase::Wait => Color::DarkGray,
            Phase::ToHost => Color::LightRed,
            Phase::ToDevice => Color::LightBlue,
        })
    }

    /// The cell drawn for a phase: a block in colour, the phase's letter without.
    pub fn phase_symbol(&self, phase: Phase) -> &'static str {
        if self.color {
            if phase == Phase::Wait {
                "░"
            } else {
                "█"
            }
        } else {
            phase_letter(phase)
        }
    }

    /// A grey level 0..=255 for a digit pixel.
    pub fn pixel(&self, level: u8) -> Color {
        Color::Rgb(level, level, level)
    }
}

pub fn phase_letter(phase: Phase) -> &'static str {
    match phase {
        Phase::Forward => "F",
        Phase::Backward => "B",
        Phase::AllReduce => "A",
        Phase::Update => "U",
        Phase::Pull => "P",
        Phase::Push => "S",
        Phase::Wait => ".",
        Phase::ToHost => "h",
        Phase::ToDevice => "d",
    }
}
