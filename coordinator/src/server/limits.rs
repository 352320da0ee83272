//! What one client, or all of them together, may hold of the accept loop.
//!
//! A TLS handshake costs the coordinator memory and CPU before it knows who
//! is calling, so handshakes in flight are capped, in total and per client
//! address: a host that opens thousands of connections and never finishes a
//! handshake (a slow-loris flood) holds at most its own share, and the rest
//! of the fleet keeps connecting. A connection over its address's share waits
//! for a slot within the handshake deadline instead of being refused, so a
//! reconnect storm of many agents behind one address (NAT, the load
//! generator) only queues. Open connections, sessions included, are capped
//! too: past the cap a new connection is closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

use crate::config::LimitsConfig;

/// Tracked addresses past which those nobody holds are swept out.
const PRUNE_AT: usize = 4096;

/// Handshake slots, in total and per client address.
#[derive(Debug)]
pub struct HandshakeSlots {
    total: Arc<Semaphore>,
    per_address_max: usize,
    per_address: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

impl HandshakeSlots {
    pub fn new(limits: &LimitsConfig) -> Arc<Self> {
        Arc::new(HandshakeSlots {
            total: Arc::new(Semaphore::new(limits.max_handshakes)),
            per_address_max: limits.max_handshakes_per_address,
            per_address: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for a slot of `peer`'s address, then for one of the total (in
    /// that order, so one address's queue never holds total slots).
    pub async fn acquire(self: &Arc<Self>, peer: IpAddr) -> HandshakeSlot {
        let address = {
            let mut addresses = self.addresses();
            if addresses.len() >= PRUNE_AT {
                // Waiters that gave up can leave an address behind.
                addresses.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
            }
            addresses
                .entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_address_max)))
                .clone()
        };
        let address = address.acquire_owned().await.expect("never closed");
        let total = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        HandshakeSlot {
            slots: self.clone(),
            peer,
            permits: Some((address, total)),
        }
    }

    /// Addresses with a handshake in flight or queued.
    #[cfg(test)]
    fn addresses_tracked(&self) -> usize {
        self.addresses().len()
    }

    fn addresses(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Arc<Semaphore>>> {
        self.per_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A handshake's place; given back when dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    slots: Arc<HandshakeSlots>,
    peer: IpAddr,
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        drop(self.permits.take());
        // Forget an address nobody holds or waits for: each permit and each
        // waiter keeps a reference, so the map's own is then the only one.
        let mut addresses = self.slots.addresses();
        if addresses
            .get(&self.peer)
            .is_some_and(|semaphore| Arc::strong_count(semaphore) == 1)
        {
            addresses.remove(&self.peer);
        }
    }
}

/// Open connections, sessions included.
#[derive(Debug, Clone)]
pub struct ConnectionSlots(Arc<Semaphore>);

impl ConnectionSlots {
    pub fn new(limits: &LimitsConfig) -> Self {
        ConnectionSlots(Arc::new(Semaphore::new(limits.max_connections)))
    }

    /// A slot for a new connection, or `None` when all are taken.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// A connection that gives its slot back when it closes.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
}

impl<S> Counted<S> {
    pub fn new(inner: S, slot: OwnedSemaphorePermit) -> Self {
        Counted { inner, _slot: slot }
    }
}

impl<S: Connected> Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(total: usize, per_address: usize) -> LimitsConfig {
        LimitsConfig {
            max_handshakes: total,
            max_handshakes_per_address: per_address,
            ..LimitsConfig::default()
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    async fn acquired_within(
        slots: &Arc<HandshakeSlots>,
        peer: IpAddr,
        wait: Duration,
    ) -> Option<HandshakeSlot> {
        tokio::time::timeout(wait, slots.acquire(peer)).await.ok()
    }

    #[tokio::test]
    async fn an_address_over_its_share_waits_and_others_go_ahead() {
        let slots = HandshakeSlots::new(&limits(10, 2));
        let held = [slots.acquire(A).await, slots.acquire(A).await];
        let short = Duration::from_millis(50);
        assert!(acquired_within(&slots, A, short).await.is_none());
        assert!(acquired_within(&slots, B, short).await.is_some());
        drop(held);
        assert!(acquired_within(&slots, A, short).await.is_some());
    }

    #[tokio::test]
    async fn the_total_caps_all_addresses_together() {
        let slots = HandshakeSlots::new(&limits(2, 2));
        let _held = [slots.acquire(A).await, slots.acquire(B).await];
        let short = Duration::from_millis(50);
        assert!(
            acquired_within(&slots, IpAddr::from([127, 0, 0, 4]), short)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn addresses_are_forgotten_once_nobody_holds_or_waits() {
        let slots = HandshakeSlots::new(&limits(10, 1));
        let held = slots.acquire(A).await;
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { drop(slots.acquire(A).await) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        // The waiter's slot is still tracked until it is done with it.
        waiter.await.unwrap();
        assert_eq!(slots.addresses_tracked(), 0);
    }

    #[test]
    fn connections_past_the_cap_get_no_slot() {
        let slots = ConnectionSlots::new(&LimitsConfig {
            max_connections: 2,
            ..LimitsConfig::default()
        });
        let held = [slots.try_acquire(), slots.try_acquire()];
        assert!(held.iter().all(Option::is_some));
        assert!(slots.try_acquire().is_none());
        drop(held);
        assert!(slots.try_acquire().is_some());
    }
}
