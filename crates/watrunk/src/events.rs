//! Call events as JSON objects: written as lines to stdout or a file (`--events`), and fanned out to
//! the control API's WebSocket subscribers. Emitting never blocks the core: lines go to a writer
//! thread through a bounded queue (a full queue drops the line and counts it), and a slow
//! subscriber loses events (it is told how many) rather than the core waiting for it.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::thread::JoinHandle;

use tokio::sync::broadcast;

/// Lines waiting for the writer; at 1,000 calls a second and 7 events a call this is ~0.6 s.
const WRITER_QUEUE: usize = 4096;

pub struct Events {
    writer: Option<(SyncSender<String>, JoinHandle<()>)>,
    /// Lines the writer could not take in time.
    dropped: u64,
    subscribers: broadcast::Sender<String>,
}

impl Events {
    /// `target`: `-` for stdout, else a file path (appended to).
    pub fn open(target: Option<&str>) -> anyhow::Result<Events> {
        let sink: Option<Box<dyn Write + Send>> = match target {
            None => None,
            Some("-") => Some(Box::new(std::io::stdout())),
            Some(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                // Events name callers and calls: a new file is its owner's only.
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                Some(Box::new(options.open(path).map_err(|e| {
                    anyhow::anyhow!("events: cannot open {path}: {e}")
                })?))
            }
        };
        Events::with_writer(sink)
    }

    /// Events written to `sink` (if any) by a thread of their own.
    fn with_writer(sink: Option<Box<dyn Write + Send>>) -> anyhow::Result<Events> {
        let writer = match sink {
            None => None,
            Some(mut sink) => {
                let (tx, rx) = sync_channel::<String>(WRITER_QUEUE);
                let thread =
                    std::thread::Builder::new()
                        .name("events".into())
                        .spawn(move || {
                            for line in rx {
                                if writeln!(sink, "{line}")
                                    .and_then(|()| sink.flush())
                                    .is_err()
                                {
                                    break;
                                }
                            }
                        })?;
                Some((tx, thread))
            }
        };
        let (subscribers, _) = broadcast::channel(1024);
        Ok(Events {
            writer,
            dropped: 0,
            subscribers,
        })
    }

    pub fn sender(&self) -> broadcast::Sender<String> {
        self.subscribers.clone()
    }

    pub fn emit(&mut self, event: serde_json::Value) {
        let line = event.to_string();
        if let Some((writer, _)) = &self.writer {
            match writer.try_send(line.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped += 1;
                    if self.dropped.is_power_of_two() {
                        tracing::warn!(
                            "events: the writer is behind, {} lines dropped so far",
                            self.dropped
                        );
                    }
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        let _ = self.subscribers.send(line);
    }
}

impl Drop for Events {
    /// Lines already queued are written before the process goes on (`watrunk call` exits next).
    fn drop(&mut self) {
        if let Some((writer, thread)) = self.writer.take() {
            drop(writer);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver};
    use std::time::{Duration, Instant};

    /// A sink that takes nothing until the test lets it go.
    struct Stuck(Receiver<()>);

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            // Bounded, so that a failed assertion cannot leave the writer (and Drop) waiting.
            let _ = self.0.recv_timeout(Duration::from_secs(10));
            Err(std::io::Error::other("released"))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_new_events_file_is_its_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("watrunk-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let _ = std::fs::remove_file(&path);
        let events = Events::open(Some(path.to_str().unwrap())).unwrap();
        drop(events);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_stuck_writer_never_blocks_the_core_and_what_it_cannot_take_is_counted() {
        let (release, stuck) = channel();
        let mut events = Events::with_writer(Some(Box::new(Stuck(stuck)))).unwrap();
        let mut subscriber = events.sender().subscribe();
        let started = Instant::now();
        for n in 0..(WRITER_QUEUE + 100) {
            events.emit(serde_json::json!({ "event": "test", "n": n }));
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "emit waited for the writer: {:?}",
            started.elapsed()
        );
        assert!(events.dropped >= 99, "{} dropped", events.dropped);
        // A subscriber that did not keep up is told how many it lost.
        assert!(
            matches!(
                subscriber.try_recv(),
                Err(broadcast::error::TryRecvError::Lagged(n)) if n > 0
            ),
            "the subscriber hears of what it missed"
        );
        drop(release);
    }
}
