//! A UDP socket wrapper that can cut a node off: while cut, every datagram it would send or
//! receive is silently dropped, exactly like a pulled cable. Tests (and the end-to-end
//! harness) use it to partition real QUIC nodes on loopback without touching the host's
//! network configuration. It is also where the node counts what arrives (see
//! [`super::datagrams`]): every received datagram passes through here.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::datagrams::DatagramCounters;

/// Switch shared between a [`FaultySocket`] and the test that controls it.
#[derive(Clone, Debug, Default)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    /// Drop every datagram from now on.
    pub fn cut(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Deliver datagrams again.
    pub fn heal(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    fn is_cut(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A socket that drops all traffic while its [`FaultSwitch`] is cut.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    switch: FaultSwitch,
    counters: Option<Arc<DatagramCounters>>,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket").field("cut", &self.switch.is_cut()).finish()
    }
}

impl FaultySocket {
    /// Wraps a runtime socket.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, switch: FaultSwitch) -> FaultySocket {
        FaultySocket { inner, switch, counters: None }
    }

    /// Counts every datagram received (while not cut) in `counters`.
    pub(crate) fn counting(mut self, counters: Arc<DatagramCounters>) -> FaultySocket {
        self.counters = Some(counters);
        self
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.switch.is_cut() {
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                // Drop what arrived and wait for more; the inner socket re-registers `cx`.
                Poll::Ready(Ok(_)) if self.switch.is_cut() => continue,
                Poll::Ready(Ok(count)) => {
                    if let Some(counters) = &self.counters {
                        for (buf, meta) in bufs.iter().zip(meta.iter()).take(count) {
                            // With GRO one buffer holds several datagrams, `stride` apart.
                            buf[..meta.len].chunks(meta.stride.max(1)).for_each(|d| counters.record(d));
                        }
                    }
                    return Poll::Ready(Ok(count));
                }
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
