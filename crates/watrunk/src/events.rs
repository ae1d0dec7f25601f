//! Call events as JSON objects: written as lines to stdout or a file (`--events`), and fanned out to
//! the control API's WebSocket subscribers. Emitting never blocks the core: a slow subscriber loses
//! events (it is told how many), the core does not wait for it.

use std::io::Write;

use tokio::sync::broadcast;

pub struct Events {
    sink: Option<Box<dyn Write + Send>>,
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
        let (subscribers, _) = broadcast::channel(1024);
        Ok(Events { sink, subscribers })
    }

    pub fn sender(&self) -> broadcast::Sender<String> {
        self.subscribers.clone()
    }

    pub fn emit(&mut self, event: serde_json::Value) {
        let line = event.to_string();
        if let Some(sink) = &mut self.sink {
            let _ = writeln!(sink, "{line}").and_then(|()| sink.flush());
        }
        let _ = self.subscribers.send(line);
    }
}
