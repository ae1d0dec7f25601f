//! Call events as JSON objects: written as lines to stdout or a file (`--events`), fanned out to
//! the control API's WebSocket subscribers and the webhooks, counted in the metrics, and summed
//! up per call in the call detail records (`--cdr`). Emitting never blocks the core: lines go to a writer
//! thread through a bounded queue (a full queue drops the line and counts it), and a slow
//! subscriber loses events (it is told how many) rather than the core waiting for it.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::broadcast;

use crate::cdr::CdrBook;
use crate::metrics::{CallStates, Metrics};
use crate::webhooks::{WebhookConfig, Webhooks};

/// Lines waiting for the writer; at 1,000 calls a second and 7 events a call this is ~0.6 s.
const WRITER_QUEUE: usize = 4096;

pub struct Events {
    writer: Option<LineWriter>,
    /// Lines the writer could not take in time.
    dropped: u64,
    subscribers: broadcast::Sender<String>,
    metrics: Arc<Metrics>,
    states: CallStates,
    /// One line per call at its end (`--cdr`).
    cdr: Option<(LineWriter, CdrBook)>,
    webhooks: Option<Webhooks>,
}

/// Lines written to a file or stdout by a thread of their own, through a bounded queue.
struct LineWriter {
    queue: SyncSender<String>,
    thread: JoinHandle<()>,
}

impl LineWriter {
    /// `-` for stdout, else a file path (appended to; a new file is its owner's only: events and
    /// records name callers and calls).
    fn open(target: &str, what: &str) -> anyhow::Result<LineWriter> {
        let sink: Box<dyn Write + Send> = match target {
            "-" => Box::new(std::io::stdout()),
            path => {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                Box::new(
                    options
                        .open(path)
                        .map_err(|e| anyhow::anyhow!("{what}: cannot open {path}: {e}"))?,
                )
            }
        };
        LineWriter::start(sink)
    }

    fn start(mut sink: Box<dyn Write + Send>) -> anyhow::Result<LineWriter> {
        let (queue, rx) = sync_channel::<String>(WRITER_QUEUE);
        let thread = std::thread::Builder::new()
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
        Ok(LineWriter { queue, thread })
    }

    /// False when the queue is full (the line is dropped).
    fn offer(&self, line: String) -> bool {
        !matches!(self.queue.try_send(line), Err(TrySendError::Full(_)))
    }

    /// What is queued is written before this returns.
    fn close(self) {
        drop(self.queue);
        let _ = self.thread.join();
    }
}

impl Events {
    /// `target`: `-` for stdout, else a file path (appended to).
    pub fn open(target: Option<&str>) -> anyhow::Result<Events> {
        let writer = target.map(|t| LineWriter::open(t, "events")).transpose()?;
        Ok(Events::with(writer))
    }

    fn with(writer: Option<LineWriter>) -> Events {
        let (subscribers, _) = broadcast::channel(1024);
        Events {
            writer,
            dropped: 0,
            subscribers,
            metrics: Arc::new(Metrics::new()),
            states: CallStates::default(),
            cdr: None,
            webhooks: None,
        }
    }

    /// Events written to `sink` (if any) by a thread of their own.
    #[cfg(test)]
    fn with_writer(sink: Option<Box<dyn Write + Send>>) -> anyhow::Result<Events> {
        let writer = sink.map(LineWriter::start).transpose()?;
        Ok(Events::with(writer))
    }

    /// A call detail record per call, as JSON lines in `path` (`-`: stdout).
    pub fn with_cdr(mut self, path: &str) -> anyhow::Result<Events> {
        self.cdr = Some((LineWriter::open(path, "cdr")?, CdrBook::default()));
        Ok(self)
    }

    /// Each event POSTed to the webhooks' URLs too.
    pub fn with_webhooks(mut self, config: &WebhookConfig) -> anyhow::Result<Events> {
        if !config.urls.is_empty() {
            self.webhooks = Some(Webhooks::start(config, self.metrics.clone())?);
        }
        Ok(self)
    }

    pub fn sender(&self) -> broadcast::Sender<String> {
        self.subscribers.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn emit(&mut self, event: serde_json::Value) {
        self.states.observe(&self.metrics, &event);
        if let Some((writer, book)) = &mut self.cdr {
            if let Some(record) = book.observe(&event) {
                if !writer.offer(record.to_string()) {
                    tracing::warn!("cdr: the writer is behind: a call's record was dropped");
                }
            }
        }
        let line = event.to_string();
        if let Some(webhooks) = &self.webhooks {
            webhooks.offer(event["event"].as_str().unwrap_or_default(), &line);
        }
        if let Some(writer) = &self.writer {
            if !writer.offer(line.clone()) {
                self.dropped += 1;
                self.metrics.events_dropped();
                if self.dropped.is_power_of_two() {
                    tracing::warn!(
                        "events: the writer is behind, {} lines dropped so far",
                        self.dropped
                    );
                }
            }
        }
        let _ = self.subscribers.send(line);
    }
}

impl Drop for Events {
    /// Lines already queued are written before the process goes on (`watrunk call` exits next);
    /// webhooks get a few seconds to deliver theirs.
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.close();
        }
        if let Some((writer, _)) = self.cdr.take() {
            writer.close();
        }
        if let Some(webhooks) = self.webhooks.take() {
            webhooks.close(std::time::Duration::from_secs(3));
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
