//! The log panel: `LEVEL source: text` lines, newest at the bottom, scrollable.

use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Paragraph},
};

use crate::tui::app::{App, Level, LogLine};

fn line(l: &LogLine) -> Line<'_> {
    let (level, style) = match l.level {
        Level::Info => ("INFO ", Style::new().fg(Color::Blue)),
        Level::Warn => ("WARN ", Style::new().fg(Color::Yellow)),
        Level::Error => ("ERROR", Style::new().fg(Color::Red)),
    };
    let text = if l.level == Level::Info {
        Style::new()
    } else {
        style
    };
    Line::from(vec![
        Span::styled(level, style.add_modifier(Modifier::BOLD)),
        Span::raw(" "),
        Span::styled(l.source.as_str(), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(": "),
        Span::styled(l.text.as_str(), text),
    ])
}

/// Draws the log panel into `area`, `app.log_scroll` lines up from the bottom.
pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let height = usize::from(area.height.saturating_sub(2));
    let len = app.log.len();
    let scroll = app.log_scroll.min(len.saturating_sub(height));
    let end = len - scroll;
    let start = end.saturating_sub(height);
    let mut title = vec![Span::raw(format!(" log · {len} lines "))];
    if scroll > 0 {
        let hint = format!("· scrolled up {scroll} (End follows) ");
        title.push(Span::styled(hint, Color::Yellow));
    }
    let block = Block::bordered().title(Line::from(title));
    let lines: Vec<Line> = if len == 0 {
        vec![Line::styled("no log lines yet", Color::DarkGray)]
    } else {
        app.log.range(start..end).map(line).collect()
    };
    frame.render_widget(Paragraph::new(lines).block(block), area);
}
