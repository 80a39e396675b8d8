//! Sends `tracing` output to the log panel instead of stderr, which would draw over
//! the UI.

use std::{
    io,
    sync::{Mutex, mpsc::Sender},
};

use super::{
    app::{Level, LogLine},
    msg::Msg,
};

static SINK: Mutex<Option<Sender<Msg>>> = Mutex::new(None);

/// Routes the lines written through [`LogSink`] to `tx` from now on.
pub fn connect(tx: Sender<Msg>) {
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
}

/// A `tracing_subscriber` writer whose lines become log-panel messages (dropped
/// until [`connect`] is called).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSink;

/// One formatted event, sent when dropped.
#[derive(Debug, Default)]
pub struct LineWriter(Vec<u8>);

impl io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The level and message of a line formatted by `tracing_subscriber::fmt` without
/// time, target or colours (`" WARN message"`).
pub fn parse_line(text: &str) -> LogLine {
    let text = text.trim();
    let (level, rest) = match text.split_once(' ') {
        Some(("ERROR", rest)) => (Level::Error, rest),
        Some(("WARN", rest)) => (Level::Warn, rest),
        Some(("INFO" | "DEBUG" | "TRACE", rest)) => (Level::Info, rest),
        _ => (Level::Warn, text),
    };
    LogLine {
        level,
        source: "patchwork".into(),
        text: rest.trim().to_string(),
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        if text.trim().is_empty() {
            return;
        }
        if let Some(tx) = SINK.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(Msg::Log(parse_line(&text)));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_read_from_the_formatted_line() {
        assert_eq!(parse_line(" WARN disk is slow\n").level, Level::Warn);
        assert_eq!(parse_line("ERROR gone").text, "gone");
        assert_eq!(parse_line("INFO fine").level, Level::Info);
        assert_eq!(parse_line("odd").text, "odd");
    }
}
