//! Layout: the sessions table, the panel tabs, the focused panel and the help bar.

pub mod attention;
pub mod charts;
pub mod help;
pub mod log;
pub mod plugins;
pub mod sessions;

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Tabs,
};

use super::app::{App, Modal, Panel};

/// Rows the focused panel keeps however many sessions there are.
const MIN_PANEL: u16 = 8;

/// The tab titles, numbered as their keys.
fn tabs(app: &App) -> Tabs<'static> {
    let titles = Panel::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} {}", i + 1, p.title()));
    let selected = Panel::ALL.iter().position(|&p| p == app.panel);
    Tabs::new(titles)
        .select(selected)
        .style(Color::Gray)
        .highlight_style(
            Style::new()
                .fg(Color::Black)
                .bg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
        )
        .divider(Span::styled("│", Color::DarkGray))
}

/// `◆ compare: name` while a compare session is set.
fn compare(app: &App) -> Option<Line<'static>> {
    let row = app.sessions.get(app.compare?)?;
    let text = format!("◆ compare: {} (c clears) ", row.name);
    Some(Line::styled(text, Color::Magenta).right_aligned())
}

/// Draws the whole UI: sessions, tabs, the focused panel, the help bar, then any modal.
pub fn render(app: &App, frame: &mut Frame) {
    let area = frame.area();
    let most = area.height.saturating_sub(2 + MIN_PANEL).max(4);
    let top = sessions::height(app, area.width, most);
    let [top, tab_line, panel, bar] = Layout::vertical([
        Constraint::Length(top),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);

    sessions::render(app, frame, top);
    let compare = compare(app);
    let hint = compare.as_ref().map_or(0, |l| l.width() as u16);
    let [tab_area, hint_area] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(hint)]).areas(tab_line);
    frame.render_widget(tabs(app), tab_area);
    if let Some(line) = compare {
        frame.render_widget(line, hint_area);
    }
    match app.panel {
        Panel::Charts => charts::render(app, frame, panel),
        Panel::Attention => attention::render(app, frame, panel),
        Panel::Plugins => plugins::render(app, frame, panel),
        Panel::Log => log::render(app, frame, panel),
    }
    frame.render_widget(help::bar(app, area.width), bar);

    match app.modal {
        Some(Modal::Help) => help::render_help(frame, area),
        Some(Modal::ConfirmQuit) => help::render_confirm_quit(app, frame, area),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer, layout::Rect, widgets::Widget};

    use super::*;
    use crate::{
        session::attention::{AttentionImage, AttentionMaps},
        tui::app::{Level, PluginRow, SessionRow, SessionState},
    };

    const WORKSPACE: &str = "Workspace(name: \"w\", data: {\"d\": Shapes(())}, sessions: \
        [Session(name: \"s\", data: \"d\", backbone: Plugin(name: \"vit\"), \
        stages: [Evaluate([Knn(())])])])";

    fn attention() -> AttentionMaps {
        let image = |n: usize| AttentionImage {
            size: 8,
            rgb: (0..64)
                .map(|i| [(i % 8 * 32) as u8, (i / 8 * 32) as u8, (n * 120) as u8])
                .collect(),
            maps: (0..3)
                .map(|h| {
                    (0..16)
                        .map(|i| ((i * 7 + h * 5 + n * 3) % 16) as f32 / 15.0)
                        .collect()
                })
                .collect(),
        };
        AttentionMaps {
            label: "epoch 3".into(),
            heads: 3,
            grid: (4, 4),
            images: vec![image(0), image(1)],
        }
    }

    fn running() -> SessionRow {
        let mut row = SessionRow::new("dino-vit-s");
        row.state = SessionState::Running;
        row.stage = "pretrain (dino)".into();
        (row.epoch, row.step, row.total_steps) = (3, 400, 640);
        row.images_per_sec = 412.3;
        row.eta_secs = Some(754.0);
        for i in 0..200 {
            let x = f64::from(i);
            row.loss.push(
                2.0 * x,
                6.0 * (-x / 60.0).exp() + 0.8 + 0.05 * (x / 3.0).sin(),
            );
            let warm = (x / 20.0).min(1.0);
            row.lr.push(
                2.0 * x,
                5e-4 * warm * (0.5 + 0.5 * (x / 640.0 * std::f64::consts::PI).cos()),
            );
        }
        row.last_loss = row.loss.last().map(|p| p.1);
        for (x, y) in [(128.0, 0.31), (256.0, 0.42), (384.0, 0.47)] {
            row.eval_series("knn@20 (trained)").push(x, y);
        }
        row.attention = Some(Arc::new(attention()));
        row
    }

    fn paused() -> SessionRow {
        let mut row = SessionRow::new("mae-vit-s");
        row.state = SessionState::Paused;
        row.stage = "pretrain (mae)".into();
        (row.epoch, row.step, row.total_steps) = (1, 150, 600);
        for i in 0..75 {
            let x = f64::from(i);
            row.loss.push(2.0 * x, 4.0 * (-x / 40.0).exp() + 1.2);
            row.lr.push(2.0 * x, 3e-4 * (x / 20.0).min(1.0));
        }
        row.last_loss = row.loss.last().map(|p| p.1);
        row.eval_series("knn@20 (random init)").push(0.0, 0.12);
        row.checkpoint = Some("/work/runs/demo/mae-vit-s/step-150.safetensors".into());
        row
    }

    fn failed() -> SessionRow {
        let mut row = SessionRow::new("ijepa-tiny");
        row.state = SessionState::Failed("plugin 'dino' panicked in step: boom".into());
        row.stage = "pretrain (dino)".into();
        row.total_steps = 384;
        row
    }

    fn plugin(name: &str, kind: &str, reloads: u32, error: Option<&str>) -> PluginRow {
        PluginRow {
            name: name.into(),
            kind: kind.into(),
            version: if error.is_some() { "-" } else { "0.3.1" }.into(),
            file: format!("/opt/patchwork/target/release/lib{name}.so"),
            loaded: error.is_none(),
            reloads,
            error: error.map(Into::into),
        }
    }

    fn fixture() -> App {
        let ws = crate::workspace::schema::parse(WORKSPACE, Path::new("w.ron"))
            .expect("the fixture workspace should parse");
        let plugins = vec![
            plugin("vit", "backbone", 0, None),
            plugin("dino", "pretext", 1, None),
            plugin(
                "broken",
                "-",
                0,
                Some("plugin 'broken' needs plugin-api 0.4, host provides 0.3"),
            ),
        ];
        let mut app = App::new(&ws, plugins);
        app.workspace = "demo".into();
        app.parallel = 2;
        app.sessions = vec![running(), paused(), failed()];
        app.compare = Some(1);
        app.push_log(Level::Info, "mae-vit-s", "paused at step 150");
        app.push_log(
            Level::Warn,
            "plugins",
            "'libbroken.so' did not load (see the plugins panel)",
        );
        app.push_log(
            Level::Info,
            "dino-vit-s",
            "evaluated: knn@20 (trained) 0.4700",
        );
        app.push_log(
            Level::Error,
            "ijepa-tiny",
            "plugin 'dino' panicked in step: boom",
        );
        app
    }

    fn draw(app: &App, width: u16, height: u16) -> Buffer {
        let mut terminal =
            Terminal::new(TestBackend::new(width, height)).expect("a test terminal should open");
        terminal
            .draw(|f| render(app, f))
            .expect("drawing should succeed");
        terminal.backend().buffer().clone()
    }

    /// One line per row of symbols, skipping the cells that wide symbols cover.
    fn text(buffer: &Buffer) -> String {
        let width = usize::from(buffer.area.width);
        let mut out = String::new();
        for row in buffer.content.chunks(width) {
            let mut line = String::new();
            let mut skip = 0;
            for cell in row {
                if skip == 0 {
                    line.push_str(cell.symbol());
                }
                skip = skip.max(Span::raw(cell.symbol()).width()).saturating_sub(1);
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn snapshot(name: &str, app: &App) {
        for (w, h) in [(80, 24), (120, 40)] {
            let screen = text(&draw(app, w, h));
            insta::with_settings!({
                snapshot_path => "snapshots",
                prepend_module_to_snapshot => false,
                filters => vec![
                    (r"\b\d+:\d\d(:\d\d)?\b", "[time]"),
                    (r"\b\d+ img/s", "[n] img/s"),
                    (r"(/[^/\s│]+)+/", "[path]/"),
                ],
            }, {
                insta::assert_snapshot!(format!("{name}_{w}x{h}"), screen);
            });
        }
    }

    fn on(panel: Panel) -> App {
        App { panel, ..fixture() }
    }

    #[test]
    fn snapshots_of_every_panel() {
        snapshot("charts", &on(Panel::Charts));
        snapshot("attention", &on(Panel::Attention));
        snapshot("plugins", &on(Panel::Plugins));
        snapshot("log", &on(Panel::Log));
    }

    #[test]
    fn snapshots_of_the_modals_and_states() {
        snapshot(
            "help",
            &App {
                modal: Some(Modal::Help),
                ..fixture()
            },
        );
        snapshot(
            "confirm_quit",
            &App {
                modal: Some(Modal::ConfirmQuit),
                ..fixture()
            },
        );
        snapshot(
            "quitting",
            &App {
                quitting: true,
                ..fixture()
            },
        );
        snapshot(
            "sessions_failed",
            &App {
                selected: 2,
                compare: None,
                ..fixture()
            },
        );
        let listed = App {
            selected: 1,
            compare: None,
            ..fixture()
        };
        snapshot("charts_eval_list", &listed);
        let mut scrolled = App {
            panel: Panel::Log,
            ..fixture()
        };
        for i in 1..=30 {
            scrolled.push_log(
                Level::Info,
                "dino-vit-s",
                format!("checkpoint at step {}", i * 10),
            );
        }
        scrolled.log_scroll = 5;
        snapshot("log_scrolled", &scrolled);
        let empty = App {
            sessions: vec![SessionRow::new("fresh")],
            selected: 0,
            compare: None,
            ..fixture()
        };
        snapshot(
            "attention_empty",
            &App {
                panel: Panel::Attention,
                ..empty
            },
        );
    }

    #[test]
    fn small_terminals_draw_without_panicking() {
        for panel in Panel::ALL {
            for modal in [None, Some(Modal::Help), Some(Modal::ConfirmQuit)] {
                for (w, h) in [(1, 1), (12, 4), (30, 10), (50, 16)] {
                    draw(
                        &App {
                            panel,
                            modal,
                            ..fixture()
                        },
                        w,
                        h,
                    );
                }
            }
        }
    }

    #[test]
    fn a_failed_sessions_message_shows_in_red_at_80_columns() {
        for selected in [0, 2] {
            let buffer = draw(
                &App {
                    selected,
                    ..fixture()
                },
                80,
                24,
            );
            let screen = text(&buffer);
            let (y, line) = screen
                .lines()
                .enumerate()
                .find(|(_, l)| l.contains("panicked in step: boom"))
                .expect("the failure message should show");
            let x = line.find("boom").expect("found above");
            let x = line[..x].chars().count() as u16;
            assert_eq!(buffer[(x, y as u16)].fg, Color::Red, "{screen}");
        }
    }

    #[test]
    fn the_help_bar_keeps_help_and_quit_when_narrow() {
        let bar = help::bar(&fixture(), 60);
        assert!(bar.width() <= 60, "{bar}");
        let bar = bar.to_string();
        assert!(bar.ends_with("? help · q quit"), "{bar}");
        assert!(bar.starts_with(" ↑/k ↓/j select"), "{bar}");
    }

    #[test]
    fn heat_ramp_runs_from_black_through_red_and_yellow_to_white() {
        assert_eq!(attention::heat(0.0), [0, 0, 0]);
        assert_eq!(attention::heat(1.0 / 3.0), [255, 0, 0]);
        assert_eq!(attention::heat(2.0 / 3.0), [255, 255, 0]);
        assert_eq!(attention::heat(1.0), [255, 255, 255]);
        assert_eq!(attention::heat(-1.0), [0, 0, 0]);
        assert_eq!(attention::heat(2.0), [255, 255, 255]);
    }

    #[test]
    fn half_blocks_put_the_upper_pixel_in_front_and_the_lower_behind() {
        let pixels = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]];
        let area = Rect::new(0, 0, 2, 1);
        let mut buf = Buffer::empty(area);
        attention::HalfBlocks {
            width: 2,
            pixels: &pixels,
        }
        .render(area, &mut buf);
        for (x, upper, lower) in [(0, pixels[0], pixels[2]), (1, pixels[1], pixels[3])] {
            let cell = &buf[(x, 0)];
            assert_eq!(cell.symbol(), "▀");
            assert_eq!(cell.fg, Color::Rgb(upper[0], upper[1], upper[2]));
            assert_eq!(cell.bg, Color::Rgb(lower[0], lower[1], lower[2]));
        }
    }

    #[test]
    fn compact_numbers_fit_axis_labels() {
        assert_eq!(charts::compact(384.0), "384");
        assert_eq!(charts::compact(1234.0), "1.2k");
        assert_eq!(charts::compact(2.3456), "2.346");
        assert_eq!(charts::compact(5e-4), "5.0e-4");
        assert_eq!(sessions::duration(754.0), "12:34");
        assert_eq!(sessions::duration(3723.0), "1:02:03");
    }
}
