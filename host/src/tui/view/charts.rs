//! Loss, learning-rate and evaluation charts of the selected session, with the
//! compared session overlaid.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    symbols::Marker,
    text::{Line, Span},
    widgets::{Axis, Block, Chart, Dataset, GraphType, LegendPosition, Paragraph},
};

use crate::tui::app::{App, SessionRow};

/// Colour of the selected session's series.
const MAIN: Color = Color::Cyan;
/// Colour of the compared session's series.
const OTHER: Color = Color::Magenta;
/// Colours of evaluation series, in order.
const PALETTE: [Color; 4] = [
    Color::Yellow,
    Color::Green,
    Color::LightBlue,
    Color::LightRed,
];

/// One line on a chart.
struct Curve<'a> {
    name: String,
    points: &'a [(f64, f64)],
    color: Color,
}

/// `v` in at most about six columns: `384`, `1.2k`, `2.345`, `5.0e-4`.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

/// `[min, max]` of `values`, widened when they are all equal; `None` when empty.
fn span(values: impl Iterator<Item = f64>, pad: f64) -> Option<[f64; 2]> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let width = hi - lo;
    let pad = if width > 0.0 {
        width * pad
    } else {
        (lo.abs() * 0.1).max(1e-3)
    };
    let lo_padded = if lo >= 0.0 {
        (lo - pad).max(0.0)
    } else {
        lo - pad
    };
    Some([lo_padded, hi + pad])
}

fn labels(bounds: [f64; 2]) -> Vec<Line<'static>> {
    let mid = (bounds[0] + bounds[1]) / 2.0;
    [bounds[0], mid, bounds[1]]
        .map(|v| Line::from(compact(v)))
        .into()
}

/// A line chart of `lines` in a bordered block titled `title`; the legend shows
/// when `legend` is set and there is room.
fn chart<'a>(title: Line<'a>, lines: &[Curve<'a>], legend: bool) -> Chart<'a> {
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let x = span(all().map(|p| p.0), 0.0).unwrap_or([0.0, 1.0]);
    let x = if x[1] > x[0] { x } else { [x[0], x[0] + 1.0] };
    let y = span(all().map(|p| p.1), 0.05).unwrap_or([0.0, 1.0]);
    let datasets = lines
        .iter()
        .map(|l| {
            let d = Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(l.color)
                .data(l.points);
            if legend { d.name(l.name.clone()) } else { d }
        })
        .collect();
    let axis_style = Style::new().fg(Color::DarkGray);
    Chart::new(datasets)
        .block(Block::bordered().title(title))
        .x_axis(
            Axis::default()
                .bounds(x)
                .labels(labels(x))
                .style(axis_style),
        )
        .y_axis(
            Axis::default()
                .bounds(y)
                .labels(labels(y))
                .style(axis_style),
        )
        .legend_position(Some(LegendPosition::TopRight))
        .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)))
}

/// ` what ` in bold.
fn heading(what: &str) -> Span<'_> {
    Span::styled(
        format!(" {what} "),
        Style::new().add_modifier(Modifier::BOLD),
    )
}

/// The title of a chart: what it shows and of which sessions.
fn title<'a>(what: &'a str, row: &'a SessionRow, other: Option<&'a SessionRow>) -> Line<'a> {
    let mut spans = vec![
        heading(what),
        Span::raw("· "),
        Span::styled(row.name.as_str(), MAIN),
    ];
    if let Some(other) = other {
        spans.push(Span::raw(" vs "));
        spans.push(Span::styled(format!("◆ {}", other.name), OTHER));
    }
    spans.push(Span::raw(" "));
    Line::from(spans)
}

/// Series `pick` of the selected session and of the compared one.
fn pair<'a>(
    row: &'a SessionRow,
    other: Option<&'a SessionRow>,
    pick: fn(&SessionRow) -> &[(f64, f64)],
) -> Vec<Curve<'a>> {
    let mut lines = vec![Curve {
        name: row.name.clone(),
        points: pick(row),
        color: MAIN,
    }];
    if let Some(other) = other {
        lines.push(Curve {
            name: format!("◆ {}", other.name),
            points: pick(other),
            color: OTHER,
        });
    }
    lines
}

/// The evaluation series as a chart, or their latest values while they have fewer
/// than two points each.
fn evals(frame: &mut Frame, area: Rect, row: &SessionRow, other: Option<&SessionRow>) {
    let sessions = [Some(row), other];
    let charted = sessions
        .iter()
        .flatten()
        .any(|r| r.evals.iter().any(|(_, s)| s.points.len() > 1));
    let block_title = Line::from(heading("evaluation"));
    if charted {
        let mut lines = Vec::new();
        for (i, (name, s)) in row.evals.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            lines.push(Curve {
                name: name.clone(),
                points: &s.points,
                color,
            });
        }
        for (name, s) in other.iter().flat_map(|o| o.evals.iter()) {
            lines.push(Curve {
                name: format!("◆ {name}"),
                points: &s.points,
                color: OTHER,
            });
        }
        frame.render_widget(chart(block_title, &lines, true), area);
        return;
    }
    let mut text: Vec<Line> = Vec::new();
    for (r, color) in [(Some(row), MAIN), (other, OTHER)] {
        let Some(r) = r else { continue };
        let marker = if color == OTHER { "◆ " } else { "" };
        for (name, s) in &r.evals {
            if let Some((step, value)) = s.last() {
                text.push(Line::from(vec![
                    Span::styled(format!("{marker}{name}: "), color),
                    Span::styled(
                        format!("{value:.4}"),
                        Style::new().add_modifier(Modifier::BOLD),
                    ),
                    Span::styled(format!(" at step {}", compact(step)), Color::DarkGray),
                ]));
            }
        }
    }
    if text.is_empty() {
        text.push(Line::styled("no evaluation yet", Color::DarkGray));
    }
    frame.render_widget(
        Paragraph::new(text).block(Block::bordered().title(block_title)),
        area,
    );
}

/// Draws the charts panel into `area`.
pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let Some(row) = app.current() else {
        frame.render_widget(Paragraph::new("no sessions").block(Block::bordered()), area);
        return;
    };
    let other = app
        .compare
        .filter(|&i| i != app.selected)
        .and_then(|i| app.sessions.get(i));
    if row.loss.points.is_empty() && row.lr.points.is_empty() {
        let text = Line::styled("no steps yet", Color::DarkGray).centered();
        let block = Block::bordered().title(title("charts", row, other));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let [_, middle, _] = Layout::vertical([
            Constraint::Fill(1),
            Constraint::Length(1),
            Constraint::Fill(1),
        ])
        .areas(inner);
        frame.render_widget(text, middle);
        return;
    }
    let [top, bottom] = Layout::vertical([Constraint::Fill(3), Constraint::Fill(2)]).areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).areas(bottom);
    let legend = other.is_some();
    let loss = pair(row, other, |r| &r.loss.points);
    frame.render_widget(chart(title("loss", row, other), &loss, legend), top);
    let lr = pair(row, other, |r| &r.lr.points);
    frame.render_widget(
        chart(Line::from(heading("learning rate")), &lr, false),
        left,
    );
    evals(frame, right, row, other);
}
