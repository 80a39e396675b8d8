//! The one-line help bar and the modals (full key help, confirm quit), printed from
//! the keymap table.

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph, Wrap},
};

use crate::tui::{
    app::App,
    keys::{Action, BINDINGS, Binding},
};

const SEPARATOR: &str = " · ";

fn key_style() -> Style {
    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
}

/// A binding's help in the bar: the first word, or all of it when it reads `a / b`.
fn short(help: &str) -> &str {
    if help.contains(" / ") {
        help
    } else {
        help.split(' ').next().unwrap_or(help)
    }
}

fn item_width(b: &Binding) -> usize {
    Span::raw(b.keys).width() + 1 + Span::raw(short(b.help)).width()
}

/// The help bar for `width` columns: the `in_bar` bindings, dropping from the end
/// (but keeping help and quit) until they fit; while quitting, what it waits for.
pub fn bar(app: &App, width: u16) -> Line<'static> {
    if app.quitting {
        let text = format!(
            " stopping {} session(s) (checkpoint first), then quitting…",
            app.active()
        );
        return Line::styled(
            text,
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        );
    }
    let mut items: Vec<&Binding> = BINDINGS.iter().filter(|b| b.in_bar).collect();
    let total = |items: &[&Binding]| {
        1 + items.iter().map(|b| item_width(b)).sum::<usize>()
            + Span::raw(SEPARATOR).width() * items.len().saturating_sub(1)
    };
    let essential = |b: &Binding| matches!(b.action, Action::Help | Action::Quit);
    while total(&items) > usize::from(width) {
        match items.iter().rposition(|b| !essential(b)) {
            Some(i) => items.remove(i),
            None => break,
        };
    }
    let mut spans = vec![Span::raw(" ")];
    for (i, b) in items.iter().enumerate() {
        if i > 0 {
            spans.push(Span::styled(SEPARATOR, Color::DarkGray));
        }
        spans.push(Span::styled(b.keys, key_style()));
        spans.push(Span::styled(format!(" {}", short(b.help)), Color::Gray));
    }
    Line::from(spans)
}

/// A bordered box of `width * height` centred in `area`, cleared.
fn modal(frame: &mut Frame, area: Rect, width: usize, height: usize, block: Block<'_>) -> Rect {
    let rect = area.centered(
        Constraint::Length(width.min(usize::from(area.width)) as u16),
        Constraint::Length(height.min(usize::from(area.height)) as u16),
    );
    frame.render_widget(Clear, rect);
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    inner
}

/// Every binding with its keys and what it does.
pub fn render_help(frame: &mut Frame, area: Rect) {
    let keys = BINDINGS
        .iter()
        .map(|b| Span::raw(b.keys).width())
        .max()
        .unwrap_or(0);
    let help = BINDINGS
        .iter()
        .map(|b| Span::raw(b.help).width())
        .max()
        .unwrap_or(0);
    let lines: Vec<Line> = BINDINGS
        .iter()
        .map(|b| {
            let pad = keys.saturating_sub(Span::raw(b.keys).width());
            Line::from(vec![
                Span::raw(" ".repeat(pad + 1)),
                Span::styled(b.keys, key_style()),
                Span::raw(format!("  {}", b.help)),
            ])
        })
        .collect();
    let block = Block::bordered()
        .title(Span::styled(
            " keys ",
            Style::new().add_modifier(Modifier::BOLD),
        ))
        .title_bottom(Line::styled(" ? or esc closes ", Color::DarkGray).right_aligned())
        .border_style(Color::Cyan);
    let inner = modal(frame, area, keys + help + 5, lines.len() + 2, block);
    frame.render_widget(Paragraph::new(lines), inner);
}

/// "N session(s) running. Stop them (checkpoint first) and quit? y / n"
pub fn render_confirm_quit(app: &App, frame: &mut Frame, area: Rect) {
    let text = Line::from(vec![
        Span::raw(format!(
            "{} session(s) running. Stop them (checkpoint first) and quit? ",
            app.active()
        )),
        Span::styled("y", key_style()),
        Span::raw(" / "),
        Span::styled("n", key_style()),
    ]);
    let width = (text.width() + 4).min(usize::from(area.width.saturating_sub(4)).max(20));
    let inner_width = width.saturating_sub(4).max(1);
    // Word wrapping may take a line more than the width alone says.
    let lines = match text.width().div_ceil(inner_width) {
        1 => 1,
        n => n + 1,
    };
    let block = Block::bordered()
        .title(Span::styled(
            " quit ",
            Style::new().add_modifier(Modifier::BOLD),
        ))
        .border_style(Color::Yellow);
    let inner = modal(frame, area, width, lines + 2, block);
    let inner = Rect {
        x: inner.x + 1,
        width: inner.width.saturating_sub(2),
        ..inner
    };
    frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), inner);
}
