//! A burst of datagrams read from a UDP socket in one `recvmmsg(2)` (Linux; one `recvfrom` at a
//! time elsewhere). The shared media socket's reader takes the inbound packets of every call, so a
//! wake-up usually finds several queued: one system call for them instead of one each.
//!
//! Hand-written over libc because tokio has no batched receive and quinn-udp's turns on UDP GRO
//! and control messages, which this path neither needs nor sizes its buffers for.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams taken per system call.
pub(crate) const BATCH: usize = 32;

/// Fixed receive buffers for `BATCH` datagrams of up to `MTU` bytes, allocated once.
pub(crate) struct Batch<const MTU: usize> {
    buffers: Box<[[u8; MTU]; BATCH]>,
    received: [(usize, SocketAddr); BATCH],
    #[cfg(target_os = "linux")]
    names: Box<[libc::sockaddr_storage; BATCH]>,
}

impl<const MTU: usize> Batch<MTU> {
    pub(crate) fn new() -> Self {
        Batch {
            buffers: vec![[0u8; MTU]; BATCH]
                .into_boxed_slice()
                .try_into()
                .unwrap_or_else(|_| unreachable!("BATCH buffers")),
            received: [(0, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH],
            #[cfg(target_os = "linux")]
            // SAFETY: sockaddr_storage is plain bytes; all zeroes is a valid (AF_UNSPEC) value.
            names: Box::new(unsafe { std::mem::zeroed() }),
        }
    }

    /// Reads what is queued on `socket`, up to `BATCH` datagrams: how many (at least 1), or
    /// `WouldBlock` when none is (which clears the socket's readiness, as `try_recv_from` does).
    /// A datagram longer than `MTU` is cut to `MTU`.
    pub(crate) fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        socket.try_io(Interest::READABLE, || self.receive_now(socket))
    }

    /// Datagram `i` of the last `receive`, and who sent it.
    pub(crate) fn packet(&mut self, i: usize) -> (&mut [u8], SocketAddr) {
        let (len, from) = self.received[i];
        (&mut self.buffers[i][..len], from)
    }

    #[cfg(target_os = "linux")]
    fn receive_now(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: iovec and mmsghdr are plain C structs for which all zeroes is a valid value.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iovecs[i] = libc::iovec {
                iov_base: self.buffers[i].as_mut_ptr().cast(),
                iov_len: MTU,
            };
            let header = &mut headers[i].msg_hdr;
            header.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
        }
        // SAFETY: every header points at its own name, iovec and buffer, all of which outlive the
        // call; the kernel writes at most the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, header) in headers.iter().enumerate().take(n) {
            let len = (header.msg_len as usize).min(MTU);
            let from = socket_addr(&self.names[i]).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            self.received[i] = (len, from);
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    fn receive_now(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let (len, from) = socket.try_recv_from(&mut self.buffers[0])?;
        self.received[0] = (len, from);
        Ok(1)
    }
}

/// The address the kernel wrote into a `sockaddr_storage` (IPv4 or IPv6).
#[cfg(target_os = "linux")]
fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let v4 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_comes_in_one_call_with_each_sender_and_length() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..40u8 {
            a.send_to(&vec![i; 10 + usize::from(i)], to).await.unwrap();
        }
        // One datagram longer than the buffers.
        a.send_to(&[7u8; 2000], to).await.unwrap();
        let mut batch = Batch::<1500>::new();
        receiver.readable().await.unwrap();
        // Loopback delivers in the sender's softirq, or ksoftirqd's on a busy machine: let it finish.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let first = batch.receive(&receiver).unwrap();
        assert_eq!(first, BATCH, "a full batch in one call");
        let mut seen = Vec::new();
        for i in 0..first {
            let (packet, from) = batch.packet(i);
            assert_eq!(from, a.local_addr().unwrap());
            seen.push((packet.len(), packet[0]));
        }
        let rest = batch.receive(&receiver).unwrap();
        for i in 0..rest {
            let (packet, _) = batch.packet(i);
            seen.push((packet.len(), packet[0]));
        }
        let mut expected: Vec<(usize, u8)> = (0..40u8).map(|i| (10 + usize::from(i), i)).collect();
        expected.push((1500, 7));
        assert_eq!(seen, expected);
        let empty = batch.receive(&receiver);
        assert_eq!(empty.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn ipv6_senders_keep_their_address() {
        let Ok(receiver) = UdpSocket::bind("[::1]:0").await else {
            return; // no IPv6 loopback here
        };
        let sender = UdpSocket::bind("[::1]:0").await.unwrap();
        sender
            .send_to(b"hello", receiver.local_addr().unwrap())
            .await
            .unwrap();
        receiver.readable().await.unwrap();
        let mut batch = Batch::<1500>::new();
        assert_eq!(batch.receive(&receiver).unwrap(), 1);
        let (packet, from) = batch.packet(0);
        assert_eq!(
            (&*packet, from),
            (&b"hello"[..], sender.local_addr().unwrap())
        );
    }
}
