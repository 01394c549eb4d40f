//! A one-line progress bar on stderr for long scoring runs, drawn only when stderr is a
//! terminal: `scoring [=========>          ] 32/50  14.2/s  ETA 1s`. It redraws at most ten
//! times a second and clears its line when done, so what is printed next starts clean.
//! Test: `cargo test -p lora-ens-cli --lib progress`.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Width of the bar between the brackets, in characters.
const BAR_WIDTH: usize = 30;

/// Least time between two redraws.
const REDRAW: Duration = Duration::from_millis(100);

/// A progress bar for `done / total` items; safe to update from any thread.
#[derive(Debug)]
pub struct Progress {
    label: String,
    enabled: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    start: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A bar titled `label`, drawn when `enabled` (see [`Progress::on_stderr`]).
    pub fn new(label: &str, enabled: bool) -> Self {
        Self {
            label: label.to_owned(),
            enabled,
            state: Mutex::new(State {
                start: Instant::now(),
                last_draw: None,
            }),
        }
    }

    /// A bar that draws only when stderr is a terminal and `quiet` is false.
    pub fn on_stderr(label: &str, quiet: bool) -> Self {
        Self::new(label, !quiet && std::io::stderr().is_terminal())
    }

    /// Report `done` of `total` items; redraws when due, and always on the last item.
    pub fn update(&self, done: usize, total: usize) {
        if !self.enabled {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let due = state.last_draw.is_none_or(|t| now - t >= REDRAW);
        if !due && done < total {
            return;
        }
        state.last_draw = Some(now);
        let line = render(&self.label, done, total, now - state.start);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }

    /// Clear the bar's line (if it was drawn).
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.enabled && state.last_draw.take().is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The bar's text for `done / total` after `elapsed`.
fn render(label: &str, done: usize, total: usize, elapsed: Duration) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let filled = (frac * BAR_WIDTH as f64).floor() as usize;
    let bar = if filled >= BAR_WIDTH {
        "=".repeat(BAR_WIDTH)
    } else if filled == 0 {
        " ".repeat(BAR_WIDTH)
    } else {
        format!(
            "{}>{}",
            "=".repeat(filled - 1),
            " ".repeat(BAR_WIDTH - filled)
        )
    };
    let secs = elapsed.as_secs_f64();
    let mut line = format!("{label} [{bar}] {done}/{total}");
    if done > 0 && secs > 0.0 {
        let rate = done as f64 / secs;
        line.push_str(&format!("  {rate:.1}/s"));
        if done < total {
            let eta = (total - done) as f64 / rate;
            line.push_str(&format!("  ETA {}", duration(eta)));
        }
    }
    line
}

/// `42s`, `3m05s` or `1h02m`.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_count() {
        let half = render("scoring", 25, 50, Duration::from_secs(5));
        assert_eq!(
            half,
            format!(
                "scoring [{}>{}] 25/50  5.0/s  ETA 5s",
                "=".repeat(14),
                " ".repeat(15)
            )
        );
        let full = render("scoring", 50, 50, Duration::from_secs(10));
        assert_eq!(full, format!("scoring [{}] 50/50  5.0/s", "=".repeat(30)));
        let empty = render("scoring", 0, 50, Duration::ZERO);
        assert_eq!(empty, format!("scoring [{}] 0/50", " ".repeat(30)));
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(4.4), "4s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
    }

    #[test]
    fn a_disabled_bar_draws_nothing() {
        let p = Progress::new("x", false);
        p.update(1, 2);
        p.finish();
        assert!(p.state.lock().unwrap().last_draw.is_none());
    }
}
