//! The training progress bar: epoch, step, loss, images/s and time left. Drawn
//! only when asked for and when stderr is a terminal (indicatif hides it otherwise).

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(enabled: bool, total: u64, done: u64, prefix: String) -> Progress {
        let bar = enabled.then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} steps, {msg}, {elapsed} elapsed, ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(prefix);
            bar.set_position(done);
            bar
        });
        Progress { bar }
    }

    pub fn step(&self, loss: f32, images_per_s: f64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {loss:.4}, {images_per_s:.0} images/s"));
            bar.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A download's bar: bytes so far of `total` (a spinner when the size is
/// unknown), starting at `done` (a resumed download), on stderr when it is a
/// terminal.
pub fn bytes_bar(total: Option<u64>, done: u64, what: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes}, {bytes_per_sec}, ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {bytes}, {bytes_per_sec}")
                .expect("a valid template"),
        ),
    };
    bar.set_message(what.rsplit('/').next().unwrap_or(what).to_string());
    bar.set_position(done);
    bar
}
