//! The DTLS side of the demultiplexed ICE connection: records the read loop classified as DTLS come
//! in through a bounded channel; what DTLS writes goes straight out on the ICE connection.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, Mutex};
use webrtc_util::{Conn, Error};

pub struct DtlsEndpoint {
    conn: Arc<dyn Conn + Send + Sync>,
    records: Mutex<mpsc::Receiver<Vec<u8>>>,
}

impl DtlsEndpoint {
    pub fn new(conn: Arc<dyn Conn + Send + Sync>, records: mpsc::Receiver<Vec<u8>>) -> Self {
        DtlsEndpoint {
            conn,
            records: Mutex::new(records),
        }
    }
}

#[async_trait]
impl Conn for DtlsEndpoint {
    async fn connect(&self, _addr: SocketAddr) -> Result<(), Error> {
        Err(Error::Other("DTLS endpoint is already connected".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let record = self
            .records
            .lock()
            .await
            .recv()
            .await
            .ok_or(Error::ErrClosedListener)?;
        let n = record.len().min(buf.len());
        buf[..n].copy_from_slice(&record[..n]);
        Ok(n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), Error> {
        let n = self.recv(buf).await?;
        let from = self.conn.remote_addr().ok_or(Error::ErrClosedListener)?;
        Ok((n, from))
    }

    async fn send(&self, buf: &[u8]) -> Result<usize, Error> {
        self.conn.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> Result<usize, Error> {
        self.conn.send(buf).await
    }

    fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.conn.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.conn.remote_addr()
    }

    async fn close(&self) -> Result<(), Error> {
        self.records.lock().await.close();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
