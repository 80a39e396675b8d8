//! The only file that touches the terminal (crossterm, through ratatui): set-up and
//! restore (also on error and on panic), the input thread, and stderr, which is
//! routed to the log panel while the UI owns the screen (plugins link their own std,
//! so their panic messages and any C library's output would otherwise draw over it).

use std::{
    io,
    sync::mpsc::Sender,
    thread::{self, JoinHandle},
};

use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
};

use super::{
    app::{Level, LogLine},
    msg::{Key, Msg},
};

/// Threads whose panics are caught and shown as a failed session, not as a crash.
pub const SESSION_THREAD_PREFIX: &str = "session-";

/// Restores the terminal and stderr when dropped (normal exit and early `?` returns).
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        stderr::restore();
        ratatui::restore();
    }
}

/// Enters raw mode and the alternate screen, sends stderr lines to `tx` as log lines,
/// and installs a panic hook that restores stderr and the terminal before a panic of
/// the UI thread is printed. Panics of session threads are caught by the session
/// runner, shown in the UI, and not printed over it.
pub fn init(tx: Sender<Msg>) -> io::Result<(DefaultTerminal, Guard)> {
    let terminal = ratatui::try_init()?;
    let guard = Guard;
    stderr::capture(tx)?;
    let restore_then_report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let name = thread::current().name().unwrap_or_default().to_string();
        if !name.starts_with(SESSION_THREAD_PREFIX) {
            stderr::restore();
            restore_then_report(info);
        }
    }));
    Ok((terminal, guard))
}

#[cfg(unix)]
mod stderr {
    use std::{
        io::{self, BufRead, BufReader},
        os::fd::{FromRawFd, OwnedFd},
        sync::{
            atomic::{AtomicI32, Ordering},
            mpsc::Sender,
        },
        thread,
    };

    use super::{Level, LogLine, Msg};

    /// The process's own stderr, saved while fd 2 points at the capture pipe (-1: not
    /// captured).
    static SAVED: AtomicI32 = AtomicI32::new(-1);

    /// Points fd 2 at a pipe whose lines a thread sends to `tx`.
    pub fn capture(tx: Sender<Msg>) -> io::Result<()> {
        let mut fds = [0; 2];
        // SAFETY: `pipe` writes two new descriptors into the array, which we own.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just opened by `pipe` and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fd 2 is open for the life of the process; `dup` returns a new one.
        let saved = unsafe { libc::dup(2) };
        if saved < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `write` is open; `dup2` atomically makes fd 2 a copy of it.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&write), 2) } < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: `saved` was returned by `dup` above and is ours to close.
            unsafe { libc::close(saved) };
            return Err(e);
        }
        SAVED.store(saved, Ordering::SeqCst);
        drop(write); // fd 2 keeps the pipe's write end open
        thread::Builder::new()
            .name("tui-stderr".into())
            .spawn(move || {
                for line in BufReader::new(std::fs::File::from(read)).lines() {
                    let Ok(line) = line else { return };
                    if line.trim().is_empty() {
                        continue;
                    }
                    let msg = Msg::Log(LogLine {
                        level: Level::Warn,
                        source: "stderr".into(),
                        text: line,
                    });
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            })?;
        Ok(())
    }

    /// Points fd 2 back at the process's stderr (once; later calls do nothing).
    pub fn restore() {
        let saved = SAVED.swap(-1, Ordering::SeqCst);
        if saved >= 0 {
            // SAFETY: `saved` is the descriptor `capture` duplicated from the original
            // stderr; it is restored onto fd 2 and then closed, exactly once.
            unsafe {
                libc::dup2(saved, 2);
                libc::close(saved);
            }
        }
    }
}

#[cfg(not(unix))]
mod stderr {
    use std::{io, sync::mpsc::Sender};

    use super::Msg;

    /// Leaves stderr as it is on this platform.
    pub fn capture(_tx: Sender<Msg>) -> io::Result<()> {
        Ok(())
    }

    /// Nothing to restore.
    pub fn restore() {}
}

/// The key a terminal key event stands for.
fn key(k: KeyEvent) -> Option<Key> {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    Some(match k.code {
        KeyCode::Char(c) if ctrl => Key::Ctrl(c),
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}

/// Reads terminal events on a thread of its own and sends them to the UI loop.
pub fn spawn_input(tx: Sender<Msg>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("tui-input".into())
        .spawn(move || {
            loop {
                let msg = match event::read() {
                    Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => key(k).map(Msg::Key),
                    Ok(Event::Resize(..)) => Some(Msg::Resize),
                    Ok(_) => None,
                    Err(e) => {
                        let _ = tx.send(Msg::Log(LogLine {
                            level: Level::Error,
                            source: "patchwork".into(),
                            text: format!("cannot read the terminal: {e}"),
                        }));
                        return;
                    }
                };
                if let Some(msg) = msg
                    && tx.send(msg).is_err()
                {
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_translate_with_and_without_ctrl() {
        let k = |code, modifiers| key(KeyEvent::new(code, modifiers));
        assert_eq!(
            k(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Key::Ctrl('c'))
        );
        assert_eq!(
            k(KeyCode::Char('S'), KeyModifiers::SHIFT),
            Some(Key::Char('S'))
        );
        assert_eq!(k(KeyCode::BackTab, KeyModifiers::SHIFT), Some(Key::BackTab));
        assert_eq!(k(KeyCode::F(1), KeyModifiers::NONE), None);
    }
}
