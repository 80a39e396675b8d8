//! The sessions table (state, stage, progress, throughput, ETA, loss) and a detail line.

use ratatui::{
    Frame,
    layout::{Constraint, Flex, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap},
};

use crate::tui::app::{App, SessionRow, SessionState};

const HEADERS: [&str; 8] = [
    "session", "state", "stage", "step", "progress", "img/s", "ETA", "loss",
];
/// Columns: name, state, stage, step, progress, img/s, ETA, loss.
const COLUMNS: usize = HEADERS.len();
const PROGRESS: usize = 4;
const HIGHLIGHT: &str = "▸ ";
/// Narrowest progress cell: a 3-block bar and ` 62%`.
const MIN_PROGRESS: usize = 8;

/// The colour of a state's label.
pub fn state_color(state: &SessionState) -> Color {
    match state {
        SessionState::Running => Color::Green,
        SessionState::Pausing | SessionState::Paused | SessionState::Stopping => Color::Yellow,
        SessionState::Failed(_) => Color::Red,
        SessionState::Done => Color::Cyan,
        SessionState::Idle | SessionState::Queued | SessionState::Stopped => Color::Gray,
    }
}

/// `mm:ss`, or `h:mm:ss` from an hour on.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

/// The text columns of one row (all but the progress bar, which gets the width left).
fn cells(app: &App, i: usize, row: &SessionRow) -> [String; COLUMNS] {
    let marker = if app.compare == Some(i) { "◆ " } else { "" };
    let dash = || "-".to_string();
    let steps = if row.step == 0 && row.total_steps == 0 {
        dash()
    } else {
        format!("e{} {}/{}", row.epoch, row.step, row.total_steps)
    };
    [
        format!("{marker}{}", row.name),
        row.state.label().to_string(),
        if row.stage.is_empty() {
            dash()
        } else {
            row.stage.clone()
        },
        steps,
        String::new(),
        if row.images_per_sec > 0.0 {
            format!("{:.0}", row.images_per_sec)
        } else {
            dash()
        },
        row.eta_secs
            .filter(|_| row.state != SessionState::Done)
            .map_or_else(dash, duration),
        row.last_loss.map_or_else(dash, |l| format!("{l:.4}")),
    ]
}

fn width(s: &str) -> usize {
    Span::raw(s).width()
}

/// Column widths that fit `available` columns: the text columns as wide as their
/// widest cell, the progress bar what is left, and stage then name shrunk if need be.
fn widths(rows: &[[String; COLUMNS]], available: usize) -> [usize; COLUMNS] {
    let mut w = HEADERS.map(width);
    for row in rows {
        for (w, cell) in w.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let fixed = |w: &[usize; COLUMNS]| {
        w.iter()
            .enumerate()
            .filter(|(i, _)| *i != PROGRESS)
            .map(|(_, w)| w)
            .sum::<usize>()
            + (COLUMNS - 1)
            + width(HIGHLIGHT)
    };
    let mut over = (fixed(&w) + MIN_PROGRESS).saturating_sub(available);
    for col in [2, 0] {
        let cut = over.min(w[col].saturating_sub(8));
        w[col] -= cut;
        over -= cut;
    }
    w[PROGRESS] = available
        .saturating_sub(fixed(&w))
        .clamp(MIN_PROGRESS, 5 + 20);
    w
}

/// `███████░░░  62%` in `width` columns.
fn progress(row: &SessionRow, width: usize) -> Line<'static> {
    let fraction = row.progress();
    let bar = width.saturating_sub(5).max(1);
    let full = ((fraction * bar as f64).round() as usize).min(bar);
    Line::from(vec![
        Span::styled("█".repeat(full), state_color(&row.state)),
        Span::styled("░".repeat(bar - full), Color::DarkGray),
        Span::raw(format!(" {:>3.0}%", fraction * 100.0)),
    ])
}

/// What to say under the table: the selected session's failure, note or checkpoint,
/// then every other failure (a failed session's message always shows).
fn details(app: &App) -> Vec<Line<'static>> {
    let red = Style::new().fg(Color::Red);
    let failure = |row: &SessionRow, msg: &str| {
        Line::from(vec![
            Span::styled(row.name.clone(), red.add_modifier(Modifier::BOLD)),
            Span::styled(format!(" failed: {msg}"), red),
        ])
    };
    let mut lines = Vec::new();
    if let Some(row) = app.current() {
        let plain = |text: String| Line::from(format!("{}: {text}", row.name)).style(Color::Gray);
        match (&row.state, &row.note, &row.checkpoint) {
            (SessionState::Failed(msg), _, _) => lines.push(failure(row, msg)),
            (_, Some(note), _) => lines.push(plain(note.clone())),
            (_, None, Some(ckpt)) => lines.push(plain(format!("checkpoint {ckpt}"))),
            _ => {}
        }
    }
    for (i, row) in app.sessions.iter().enumerate() {
        if let (SessionState::Failed(msg), false) = (&row.state, i == app.selected) {
            lines.push(failure(row, msg));
        }
    }
    lines
}

/// Rows `lines` take when wrapped to `inner` columns.
fn wrapped(lines: &[Line<'_>], inner: u16) -> u16 {
    let inner = usize::from(inner.max(1));
    lines
        .iter()
        .map(|l| l.width().max(1).div_ceil(inner))
        .sum::<usize>() as u16
}

/// Height of the sessions block at `width` columns: borders, header, one row per
/// session and the detail lines, at most `max`.
pub fn height(app: &App, width: u16, max: u16) -> u16 {
    let table = app.sessions.len() as u16 + 1;
    (2 + table + wrapped(&details(app), width.saturating_sub(2))).min(max)
}

/// Draws the sessions block into `area`.
pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let running = app
        .sessions
        .iter()
        .filter(|s| s.state == SessionState::Running)
        .count();
    let title = Line::from(vec![
        Span::styled(" patchwork ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("· {} · parallel {} ", app.workspace, app.parallel)),
    ]);
    let counts = format!(" {running} running · {} queued ", app.queue.len());
    let block = Block::bordered()
        .title(title)
        .title_top(Line::from(counts).right_aligned());
    let inner = block.inner(area);
    frame.render_widget(block, area);

    let texts: Vec<[String; COLUMNS]> = app
        .sessions
        .iter()
        .enumerate()
        .map(|(i, row)| cells(app, i, row))
        .collect();
    let w = widths(&texts, usize::from(inner.width));
    let rows = app.sessions.iter().zip(texts).map(|(row, text)| {
        let cells = text.into_iter().enumerate().map(|(col, s)| match col {
            1 => Cell::from(Span::styled(s, state_color(&row.state))),
            PROGRESS => Cell::from(progress(row, w[PROGRESS])),
            5..=7 => Cell::from(Line::from(s).right_aligned()),
            _ => Cell::from(s),
        });
        Row::new(cells)
    });
    let header = Row::new(HEADERS.into_iter().enumerate().map(|(col, h)| match col {
        5..=7 => Cell::from(Line::from(h).right_aligned()),
        _ => Cell::from(h),
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let table = Table::new(rows, w.map(|w| Constraint::Length(w as u16)))
        .header(header)
        .row_highlight_style(
            Style::new()
                .bg(Color::DarkGray)
                .add_modifier(Modifier::BOLD),
        )
        .highlight_symbol(HIGHLIGHT)
        .highlight_spacing(HighlightSpacing::Always)
        .flex(Flex::SpaceBetween);

    let lines = details(app);
    let reserved = u16::from(!lines.is_empty()).min(inner.height.saturating_sub(2));
    let table_rows = (app.sessions.len() as u16 + 1).min(inner.height - reserved);
    let [table_area, detail_area] =
        Layout::vertical([Constraint::Length(table_rows), Constraint::Fill(1)]).areas(inner);
    let mut state = TableState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(table, table_area, &mut state);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }),
        detail_area,
    );
}
