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
            Some(path) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("events: cannot open {path}: {e}"))?,
            )),
        };
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
