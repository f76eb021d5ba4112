//! How the dashboard looks on this terminal: colours (true colour, 256, 16 or none) and glyphs (Unicode or ASCII).
//!
//! Nothing on screen depends on colour alone: every pod state has its own glyph and every
//! node state its own word, so a terminal without colours (or `NO_COLOR`) still tells the
//! whole story, with bold, dim and reverse video standing in for colour.

use hardware::status::Rgb;
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::border;

use crate::cluster::PodState;

/// What colours the terminal shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colours {
    /// 24-bit colour (`COLORTERM=truecolor`).
    TrueColour,
    /// The xterm 256-colour palette.
    Indexed,
    /// The 16 ANSI colours.
    Basic,
    /// No colour at all (`NO_COLOR`, `TERM=dumb`).
    None,
}

/// The terminal's capabilities, decided once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// Colour depth.
    pub colours: Colours,
    /// Unicode glyphs and box drawing (a UTF-8 locale), or plain ASCII.
    pub unicode: bool,
}

impl Look {
    /// Reads the usual environment variables: `NO_COLOR`, `COLORTERM`, `TERM`, and the
    /// locale (`LC_ALL`, `LC_CTYPE`, `LANG`).
    pub fn from_env() -> Look {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Look::detect(
            !var("NO_COLOR").is_empty(),
            &var("COLORTERM"),
            &var("TERM"),
            &[var("LC_ALL"), var("LC_CTYPE"), var("LANG")],
        )
    }

    /// Decides from the given environment values.
    pub fn detect(no_colour: bool, colorterm: &str, term: &str, locale: &[String]) -> Look {
        let colours = if no_colour || term == "dumb" {
            Colours::None
        } else if matches!(colorterm, "truecolor" | "24bit") {
            Colours::TrueColour
        } else if term.contains("256color") {
            Colours::Indexed
        } else {
            Colours::Basic
        };
        // The first locale variable that is set decides, as in setlocale(3).
        let locale = locale
            .iter()
            .find(|l| !l.is_empty())
            .map(|l| l.to_lowercase());
        let unicode = locale.is_some_and(|l| l.contains("utf-8") || l.contains("utf8"));
        Look { colours, unicode }
    }

    /// Foreground in `colour`, or plain where the terminal has none.
    pub fn fg(&self, colour: Rgb) -> Style {
        match self.terminal_colour(colour) {
            Some(colour) => Style::new().fg(colour),
            None => Style::new(),
        }
    }

    /// A named signal colour: green for good, red for bad, yellow for attention. Without
    /// colour, bad things are bold and attention is plain.
    pub fn signal(&self, signal: Signal) -> Style {
        let (rgb, basic, fallback) = match signal {
            Signal::Good => (Rgb::GREEN, Color::Green, Style::new()),
            Signal::Bad => (
                Rgb::RED,
                Color::Red,
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Signal::Attention => (Rgb::AMBER, Color::Yellow, Style::new()),
            Signal::Quiet => (Rgb::new(128, 128, 128), Color::DarkGray, Style::new()),
        };
        match self.colours {
            Colours::None => fallback,
            Colours::Basic => Style::new().fg(basic),
            _ => self.fg(rgb),
        }
    }

    fn terminal_colour(&self, colour: Rgb) -> Option<Color> {
        match self.colours {
            Colours::TrueColour => Some(Color::Rgb(colour.r, colour.g, colour.b)),
            Colours::Indexed => Some(Color::Indexed(xterm_index(colour))),
            Colours::Basic => Some(basic_colour(colour)),
            Colours::None => None,
        }
    }

    /// The glyph of a pod state.
    pub fn glyph(&self, state: PodState) -> &'static str {
        let (unicode, ascii) = match state {
            PodState::Pending => ("◌", "."),
            PodState::ContainerCreating => ("◔", "o"),
            PodState::Running => ("●", "*"),
            PodState::NotReady => ("◐", "~"),
            PodState::Terminating => ("✕", "x"),
            PodState::CrashLoopBackOff => ("↻", "!"),
            PodState::ImagePullBackOff => ("⇣", "?"),
            PodState::Failed => ("✗", "X"),
            PodState::Completed => ("✓", "v"),
        };
        if self.unicode {
            unicode
        } else {
            ascii
        }
    }

    /// The glyph of a lit or dark LED.
    pub fn led(&self, lit: bool) -> &'static str {
        match (self.unicode, lit) {
            (true, true) => "●",
            (true, false) => "○",
            (false, true) => "@",
            (false, false) => ".",
        }
    }

    /// Box drawing for borders.
    pub fn border(&self) -> border::Set<'static> {
        if self.unicode {
            border::ROUNDED
        } else {
            ASCII_BORDER
        }
    }

    /// Box drawing for the selected card's border.
    pub fn selected_border(&self) -> border::Set<'static> {
        if self.unicode {
            border::THICK
        } else {
            ASCII_SELECTED_BORDER
        }
    }

    /// A key as the hint bar shows it (arrows are ASCII on ASCII terminals).
    pub fn key<'a>(&self, key: &'a str) -> &'a str {
        if self.unicode {
            return key;
        }
        match key {
            "←→" => "h/l",
            "↑↓" => "j/k",
            other => other,
        }
    }

    /// A filled and an empty cell of a usage bar.
    pub fn bar_cells(&self) -> (&'static str, &'static str) {
        if self.unicode {
            ("█", "░")
        } else {
            ("#", "-")
        }
    }
}

/// Signal colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ready, running.
    Good,
    /// NotReady, failing, master unreachable.
    Bad,
    /// Warnings, cordons, unknown.
    Attention,
    /// Secondary text.
    Quiet,
}

const ASCII_BORDER: border::Set<'static> = border::Set {
    top_left: "+",
    top_right: "+",
    bottom_left: "+",
    bottom_right: "+",
    vertical_left: "|",
    vertical_right: "|",
    horizontal_top: "-",
    horizontal_bottom: "-",
};

const ASCII_SELECTED_BORDER: border::Set<'static> = border::Set {
    top_left: "#",
    top_right: "#",
    bottom_left: "#",
    bottom_right: "#",
    vertical_left: "#",
    vertical_right: "#",
    horizontal_top: "=",
    horizontal_bottom: "=",
};

/// The nearest colour of the xterm 6x6x6 cube.
fn xterm_index(colour: Rgb) -> u8 {
    let level = |c: u8| -> u8 {
        // The cube's levels are 0, 95, 135, 175, 215, 255.
        if c < 48 {
            0
        } else if c < 115 {
            1
        } else {
            (c - 35) / 40
        }
    };
    16 + 36 * level(colour.r) + 6 * level(colour.g) + level(colour.b)
}

/// The nearest of the bright ANSI colours, by which channels dominate.
fn basic_colour(colour: Rgb) -> Color {
    let on = |c: u8| c >= 110;
    match (on(colour.r), on(colour.g), on(colour.b)) {
        (true, false, false) => Color::LightRed,
        (false, true, false) => Color::LightGreen,
        (false, false, true) => Color::LightBlue,
        (true, true, false) => Color::LightYellow,
        (false, true, true) => Color::LightCyan,
        (true, false, true) => Color::LightMagenta,
        (true, true, true) => Color::White,
        (false, false, false) => Color::DarkGray,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(no_colour: bool, colorterm: &str, term: &str, lang: &str) -> Look {
        Look::detect(
            no_colour,
            colorterm,
            term,
            &[String::new(), String::new(), lang.to_owned()],
        )
    }

    #[test]
    fn colours_degrade_with_the_terminal() {
        assert_eq!(
            env(false, "truecolor", "xterm", "en_US.UTF-8"),
            Look {
                colours: Colours::TrueColour,
                unicode: true
            }
        );
        assert_eq!(
            env(false, "", "screen-256color", "C").colours,
            Colours::Indexed
        );
        assert_eq!(env(false, "", "linux", "").colours, Colours::Basic);
        assert_eq!(env(true, "truecolor", "xterm", "").colours, Colours::None);
        assert_eq!(env(false, "", "dumb", "").colours, Colours::None);
        assert!(!env(false, "", "xterm", "C").unicode);
        let plain = env(true, "", "xterm", "");
        assert_eq!(plain.fg(Rgb::RED), Style::new());
        assert_eq!(plain.glyph(PodState::Running), "*");
    }

    #[test]
    fn colours_map_to_the_palettes() {
        assert_eq!(xterm_index(Rgb::new(0, 0, 0)), 16);
        assert_eq!(xterm_index(Rgb::new(255, 255, 255)), 231);
        assert_eq!(xterm_index(Rgb::new(255, 0, 0)), 196);
        assert_eq!(basic_colour(Rgb::new(255, 220, 0)), Color::LightYellow);
        assert_eq!(basic_colour(Rgb::new(40, 90, 255)), Color::LightBlue);
    }
}
