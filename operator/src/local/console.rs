//! What `mira run` prints while it runs: its event lines, and the running stages' progress as
//! live bars on a terminal or as plain periodic lines otherwise (a CI log, a file), so that a
//! long stage is never silent between "started" and "succeeded".

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use scorer_runner::progress::Snapshot;

pub struct Console {
    /// Live bars, on a terminal only.
    bars: Option<Bars>,
    /// Where lines go without bars.
    out: Box<dyn Write + Send>,
    /// Least time between two plain progress lines of one stage.
    plain_every: Duration,
    /// When each stage's last plain line was printed, and what it said.
    printed: BTreeMap<String, (Instant, String)>,
}

struct Bars {
    multi: MultiProgress,
    by_stage: BTreeMap<String, ProgressBar>,
    style: ProgressStyle,
}

impl Console {
    /// Bars when standard output is a terminal; plain lines at most every `plain_every` per
    /// stage otherwise.
    pub fn new(plain_every: Duration) -> Self {
        let mut console = Console::plain(Box::new(std::io::stdout()), plain_every);
        console.bars = std::io::stdout().is_terminal().then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            by_stage: BTreeMap::new(),
            style: ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        });
        console
    }

    /// Plain lines only, into `out`.
    pub fn plain(out: Box<dyn Write + Send>, plain_every: Duration) -> Self {
        Console { bars: None, out, plain_every, printed: BTreeMap::new() }
    }

    /// A line of its own, above any bars.
    pub fn line(&mut self, text: &str) {
        match &self.bars {
            Some(bars) => bars.multi.suspend(|| println!("{text}")),
            // Standard output gone (a closed pipe) is no reason to stop a run.
            None => drop(writeln!(self.out, "{text}")),
        }
    }

    /// The stages running now with their progress, keyed by `Kind/name stage`; bars of stages
    /// no longer running are removed.
    pub fn show(&mut self, running: BTreeMap<String, Snapshot>) {
        let Some(bars) = &mut self.bars else {
            for (stage, snapshot) in running {
                let summary = snapshot.summary();
                let due = self
                    .printed
                    .get(&stage)
                    .is_none_or(|(at, said)| at.elapsed() >= self.plain_every && *said != summary);
                if due {
                    drop(writeln!(self.out, "  {stage}: {summary}"));
                    self.printed.insert(stage, (Instant::now(), summary));
                }
            }
            return;
        };
        bars.by_stage.retain(|stage, bar| {
            let keep = running.contains_key(stage);
            if !keep {
                bar.finish_and_clear();
                bars.multi.remove(bar);
            }
            keep
        });
        for (stage, snapshot) in running {
            let bar = bars.by_stage.entry(stage.clone()).or_insert_with(|| {
                let bar = bars.multi.add(ProgressBar::new(0).with_style(bars.style.clone()));
                bar.set_prefix(stage);
                bar
            });
            // Not full while the units are still unknown.
            bar.set_length(snapshot.units_total.max(1));
            bar.set_position(snapshot.units_done);
            bar.set_message(snapshot.summary());
        }
    }

    /// Removes every bar (before the final report).
    pub fn clear(&mut self) {
        if let Some(bars) = &mut self.bars {
            for bar in bars.by_stage.values() {
                bar.finish_and_clear();
            }
            bars.by_stage.clear();
            let _ = bars.multi.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn at(done: u64) -> BTreeMap<String, Snapshot> {
        let snapshot =
            Snapshot { units_done: done, units_total: 4, elapsed_seconds: 10.0, workers: 1, ..Default::default() };
        BTreeMap::from([("FilterRun/filter score/code".to_string(), snapshot)])
    }

    #[test]
    fn without_a_terminal_progress_is_a_plain_line_per_stage_at_most_every_period_and_only_when_it_moved() {
        let captured = Captured::default();
        let mut console = Console::plain(Box::new(captured.clone()), Duration::from_millis(50));
        console.show(at(1));
        console.show(at(2));
        std::thread::sleep(Duration::from_millis(60));
        console.show(at(2));
        console.show(at(2));
        std::thread::sleep(Duration::from_millis(60));
        console.show(at(2));
        console.line("- FilterRun filter: stage score/code succeeded");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "  FilterRun/filter score/code: 1/4 units, ETA 30s\n\
             \x20 FilterRun/filter score/code: 2/4 units, ETA 10s\n\
             - FilterRun filter: stage score/code succeeded\n"
        );
    }
}
