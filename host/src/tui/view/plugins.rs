//! The plugins table (name, kind, version, state, reloads, file) and their load errors.

use std::path::Path;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table, Wrap},
};

use crate::tui::app::{App, PluginRow};

const HEADERS: [&str; 6] = ["plugin", "kind", "version", "state", "reloads", "file"];
const FILE: usize = 5;

/// The last component of `path` (all of it when it has none).
fn file_name(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}

fn texts(row: &PluginRow) -> [String; 6] {
    [
        row.name.clone(),
        row.kind.clone(),
        row.version.clone(),
        if row.loaded { "loaded" } else { "failed" }.to_string(),
        row.reloads.to_string(),
        row.file.clone(),
    ]
}

/// Column widths for `available` columns; the file column shows whole paths only
/// when they all fit, else file names.
fn widths(rows: &mut [[String; 6]], available: usize) -> [u16; 6] {
    let width = |s: &str| Span::raw(s).width();
    let mut w = HEADERS.map(width);
    for row in rows.iter() {
        for (w, cell) in w.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let fixed = w[..FILE].iter().sum::<usize>() + HEADERS.len() - 1;
    let room = available.saturating_sub(fixed);
    if w[FILE] > room {
        for row in rows.iter_mut() {
            row[FILE] = file_name(&row[FILE]).to_string();
        }
        w[FILE] = rows
            .iter()
            .map(|r| width(&r[FILE]))
            .max()
            .unwrap_or(0)
            .max(4);
    }
    w[FILE] = w[FILE].min(room.max(4));
    w.map(|w| w as u16)
}

/// Draws the plugins panel into `area`.
pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let loaded = app.plugins.iter().filter(|p| p.loaded).count();
    let failed = app.plugins.len() - loaded;
    let title = format!(" plugins · {loaded} loaded · {failed} failed ");
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if app.plugins.is_empty() {
        let text = Line::styled(
            "no plugins found (R scans the plugin directories again)",
            Color::DarkGray,
        );
        frame.render_widget(text, inner);
        return;
    }

    let mut texts: Vec<[String; 6]> = app.plugins.iter().map(texts).collect();
    let w = widths(&mut texts, usize::from(inner.width));
    let rows = app.plugins.iter().zip(texts).map(|(p, text)| {
        Row::new(text.into_iter().enumerate().map(|(col, s)| match col {
            3 => Cell::from(Span::styled(
                s,
                if p.loaded { Color::Green } else { Color::Red },
            )),
            4 => Cell::from(Line::from(s).right_aligned()),
            _ => Cell::from(s),
        }))
    });
    let header =
        Row::new(HEADERS).style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let table = Table::new(rows, w.map(Constraint::Length)).header(header);

    let errors: Vec<Line> = app
        .plugins
        .iter()
        .filter_map(|p| {
            let err = p.error.as_ref()?;
            Some(Line::from(vec![
                Span::styled(
                    format!("{}: ", p.name),
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                ),
                Span::styled(err.clone(), Color::Red),
            ]))
        })
        .collect();
    let table_rows = (app.plugins.len() as u16 + 1).min(inner.height);
    let [table_area, _, error_area] = Layout::vertical([
        Constraint::Length(table_rows),
        Constraint::Length(u16::from(!errors.is_empty())),
        Constraint::Fill(1),
    ])
    .areas(inner);
    frame.render_widget(table, table_area);
    frame.render_widget(
        Paragraph::new(errors).wrap(Wrap { trim: false }),
        error_area,
    );
}
