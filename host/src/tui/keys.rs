//! The keymap: one table from keys to intents, which the help bar and the `?` help
//! are printed from.

use super::msg::Key;

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Select the session above.
    Up,
    /// Select the session below.
    Down,
    /// Queue the selected session (from the start).
    Start,
    /// Queue every idle session.
    StartAll,
    /// Pause or resume the selected session.
    PauseResume,
    /// Stop the selected session after its step, checkpoint first.
    Stop,
    /// Queue the selected session from its last checkpoint.
    Restart,
    /// Scan the plugin directories again.
    Reload,
    /// Next panel.
    NextPanel,
    /// Previous panel.
    PrevPanel,
    /// Show panel `n` (0-based, in tab order).
    Panel(usize),
    /// Overlay the selected session on the charts (again: clear).
    Compare,
    /// Scroll the log up.
    ScrollUp,
    /// Scroll the log down.
    ScrollDown,
    /// Jump to the newest log line.
    ScrollEnd,
    /// Show or hide the full help.
    Help,
    /// Quit (asks first when sessions are running).
    Quit,
    /// Answer yes to a question.
    Yes,
    /// Answer no / close a modal.
    No,
}

/// One binding: the keys as the help prints them, what it does, the intent, and
/// whether the help bar shows it.
pub struct Binding {
    /// The keys, as printed.
    pub keys: &'static str,
    /// What it does.
    pub help: &'static str,
    /// The intent.
    pub action: Action,
    /// Shown in the one-line help bar.
    pub in_bar: bool,
}

const fn b(keys: &'static str, help: &'static str, action: Action, in_bar: bool) -> Binding {
    Binding {
        keys,
        help,
        action,
        in_bar,
    }
}

/// Every binding, in help order.
pub const BINDINGS: &[Binding] = &[
    b("↑/k ↓/j", "select session", Action::Up, true),
    b("s", "start selected", Action::Start, true),
    b("S", "start all idle", Action::StartAll, false),
    b("p/space", "pause / resume", Action::PauseResume, true),
    b("x", "stop (checkpoint first)", Action::Stop, true),
    b("r", "restart from checkpoint", Action::Restart, true),
    b("R", "reload plugins", Action::Reload, false),
    b("tab 1-4", "switch panel", Action::NextPanel, true),
    b("c", "compare with selected", Action::Compare, true),
    b("PgUp/PgDn End", "scroll log", Action::ScrollUp, false),
    b("?", "help", Action::Help, true),
    b("q", "quit", Action::Quit, true),
];

/// The intent of `key`, if it has one.
pub fn action(key: Key) -> Option<Action> {
    Some(match key {
        Key::Up | Key::Char('k') => Action::Up,
        Key::Down | Key::Char('j') => Action::Down,
        Key::Char('s') => Action::Start,
        Key::Char('S') => Action::StartAll,
        Key::Char('p' | ' ') => Action::PauseResume,
        Key::Char('x') => Action::Stop,
        Key::Char('r') => Action::Restart,
        Key::Char('R') => Action::Reload,
        Key::Tab | Key::Right => Action::NextPanel,
        Key::BackTab | Key::Left => Action::PrevPanel,
        Key::Char(c @ '1'..='4') => Action::Panel(c as usize - '1' as usize),
        Key::Char('c') => Action::Compare,
        Key::PageUp => Action::ScrollUp,
        Key::PageDown => Action::ScrollDown,
        Key::End | Key::Home => Action::ScrollEnd,
        Key::Char('?') => Action::Help,
        Key::Char('q') | Key::Ctrl('c') => Action::Quit,
        Key::Char('y') | Key::Enter => Action::Yes,
        Key::Char('n') | Key::Esc => Action::No,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binding_in_the_help_has_a_key() {
        let keys = [
            Key::Up,
            Key::Char('s'),
            Key::Char('S'),
            Key::Char('p'),
            Key::Char('x'),
            Key::Char('r'),
            Key::Char('R'),
            Key::Tab,
            Key::Char('c'),
            Key::PageUp,
            Key::Char('?'),
            Key::Char('q'),
        ];
        for (binding, key) in BINDINGS.iter().zip(keys) {
            assert_eq!(action(key), Some(binding.action), "{}", binding.keys);
        }
        assert_eq!(BINDINGS.len(), keys.len());
    }

    #[test]
    fn panel_digits_map_to_tab_order() {
        assert_eq!(action(Key::Char('1')), Some(Action::Panel(0)));
        assert_eq!(action(Key::Char('4')), Some(Action::Panel(3)));
        assert_eq!(action(Key::Char('5')), None);
    }
}
