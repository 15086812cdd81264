//! Progress of a long run: a bar on a terminal; in a log (stderr not a
//! terminal) one line every N images or every minute, whichever comes first,
//! with done/total, rate and time left; nothing with `--quiet`.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanDuration, ProgressBar, ProgressStyle};

/// The longest a log goes without a progress line while images are done.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The bar shown now, if any: log lines are printed above it.
static SHOWN_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Writes `bytes` to stderr, above the bar if one is shown, so that neither
/// breaks the other.
fn write_stderr(bytes: &[u8]) {
    let bar = SHOWN_BAR.lock().ok().and_then(|shown| shown.clone());
    let write = || {
        // Nowhere to report a failure to write to stderr.
        let _ = std::io::stderr().write_all(bytes);
    };
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// The writer of one log line (`tracing`'s formatter writes each event to a
/// fresh one): the text is written to stderr, past any bar, when dropped.
#[derive(Default)]
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        write_stderr(&self.0);
    }
}

/// Reports images done and prints messages without breaking the bar.
pub enum Progress {
    /// A terminal: a live bar.
    Bar(ProgressBar),
    /// A log: a line now and then.
    Lines(LogLines),
    /// `--quiet`: messages only.
    Quiet,
}

/// State of the log-line progress.
pub struct LogLines {
    total: usize,
    done: usize,
    every: usize,
    started: Instant,
    last_line: Instant,
}

impl LogLines {
    /// The progress line for `done` of `total` images after `elapsed`.
    fn line(done: usize, total: usize, elapsed: Duration) -> String {
        let per_minute = done as f64 / elapsed.as_secs_f64().max(1e-3) * 60.0;
        let left = if done == 0 {
            "unknown".to_string()
        } else {
            let seconds = elapsed.as_secs_f64() / done as f64 * (total - done) as f64;
            HumanDuration(Duration::from_secs_f64(seconds)).to_string()
        };
        format!(
            "progress: {done}/{total} images ({:.0}%), {per_minute:.1} images/min, {} elapsed, about {left} left",
            100.0 * done as f64 / total.max(1) as f64,
            HumanDuration(elapsed),
        )
    }
}

impl Progress {
    /// Progress over `total` images: a bar when stderr is a terminal, else a
    /// line every `every` images or every minute; nothing when `quiet`.
    pub fn new(total: usize, every: usize, quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64).with_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} images, {elapsed} elapsed, ~{eta} left {msg}",
                )
                .expect("valid template"),
            );
            if let Ok(mut shown) = SHOWN_BAR.lock() {
                *shown = Some(bar.clone());
            }
            Progress::Bar(bar)
        } else {
            let now = Instant::now();
            Progress::Lines(LogLines {
                total,
                done: 0,
                every: every.max(1),
                started: now,
                last_line: now,
            })
        }
    }

    /// One more image handled (done or failed).
    pub fn inc(&mut self) {
        match self {
            Progress::Bar(bar) => bar.inc(1),
            Progress::Lines(lines) => {
                lines.done += 1;
                let now = Instant::now();
                if lines.done % lines.every == 0
                    || lines.done == lines.total
                    || now - lines.last_line >= LOG_INTERVAL
                {
                    lines.last_line = now;
                    eprintln!(
                        "{}",
                        LogLines::line(lines.done, lines.total, now - lines.started)
                    );
                }
            }
            Progress::Quiet => {}
        }
    }

    /// Prints a message (an error or warning: also when quiet).
    pub fn message(&self, text: &str) {
        match self {
            Progress::Bar(bar) => bar.suspend(|| eprintln!("{text}")),
            _ => eprintln!("{text}"),
        }
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Progress::Bar(bar) = self {
            if let Ok(mut shown) = SHOWN_BAR.lock() {
                *shown = None;
            }
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_has_count_rate_and_time_left() {
        let line = LogLines::line(30, 120, Duration::from_secs(600));
        assert!(line.contains("30/120 images (25%)"), "{line}");
        assert!(line.contains("3.0 images/min"), "{line}");
        // 90 images at 20 s each.
        assert!(line.contains("about 30 minutes left"), "{line}");
    }
}
