//! A deadline on blocking MPI and NCCL calls: a collective that does not
//! finish within the run's timeout (another process stopped or died inside it)
//! ends this process with an error, and the launcher then stops the rest of
//! the job.
//!
//! Neither gives a way to interrupt a blocking collective, and MPI may only be
//! called from the main thread here, so the watchdog thread calls neither: it
//! prints the error and exits the process at once.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What is being waited for, and until when.
struct Armed {
    what: String,
    deadline: Instant,
}

#[derive(Default)]
struct Shared {
    armed: Mutex<Option<Armed>>,
    changed: Condvar,
}

/// Watches one call at a time from a thread of its own.
pub struct Watchdog {
    shared: Arc<Shared>,
    timeout: Duration,
}

/// The exit status of a process that gave up waiting.
const TIMED_OUT: i32 = 124;

impl Watchdog {
    /// Starts the watching thread of process `rank`, whose deadline
    /// `timeout` comes from the setting `limit` (named in its error).
    pub fn start(rank: usize, timeout: Duration, limit: &'static str) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared::default());
        let watched = shared.clone();
        std::thread::Builder::new()
            .name("dist-watchdog".into())
            .spawn(move || watch(&watched, rank, timeout, limit))?;
        Ok(Watchdog { shared, timeout })
    }

    /// Runs `call` (a blocking collective described by `what`) under the deadline.
    pub fn guard<R>(&self, what: impl FnOnce() -> String, call: impl FnOnce() -> R) -> R {
        self.set(Some(Armed {
            what: what(),
            deadline: Instant::now() + self.timeout,
        }));
        let result = call();
        self.set(None);
        result
    }

    fn set(&self, armed: Option<Armed>) {
        *self.shared.armed.lock().unwrap_or_else(|e| e.into_inner()) = armed;
        self.shared.changed.notify_one();
    }
}

/// The watching thread: sleeps until a deadline passes while armed.
fn watch(shared: &Shared, rank: usize, timeout: Duration, limit: &str) {
    let mut armed = shared.armed.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let wait = match armed.as_ref() {
            None => Duration::from_secs(3600),
            Some(call) => match call.deadline.checked_duration_since(Instant::now()) {
                Some(left) => left,
                None => give_up(rank, &call.what, timeout, limit),
            },
        };
        armed = shared
            .changed
            .wait_timeout(armed, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn give_up(rank: usize, what: &str, timeout: Duration, limit: &str) -> ! {
    eprintln!(
        "error: rank {rank}: {what} did not finish within {} s ({limit}): another process \
         stopped, died or is far behind; the last checkpoint is intact, continue with --resume",
        timeout.as_secs()
    );
    // SAFETY: `_exit` ends the process at once, without running destructors or
    // atexit handlers, which could block on the collective the main thread is in.
    unsafe { libc::_exit(TIMED_OUT) }
}
