//! A queue bounded in items *and* bytes.
//!
//! The producer waits while the queue is full, so a source is only pulled
//! when there is room. One item larger than the byte bound is admitted when
//! the queue is empty, so an oversized item cannot stall the pipeline.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

struct State<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    max_items: usize,
    max_bytes: usize,
    not_full: Notify,
    not_empty: Notify,
}

/// Sending half.
pub struct Sender<T>(Arc<Shared<T>>);
/// Receiving half.
pub struct Receiver<T>(Arc<Shared<T>>);

/// Current fill of a queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Depth {
    pub items: usize,
    pub bytes: usize,
}

pub fn bounded<T>(max_items: usize, max_bytes: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            closed: false,
        }),
        max_items: max_items.max(1),
        max_bytes: max_bytes.max(1),
        not_full: Notify::new(),
        not_empty: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Waits for room, then enqueues. Returns the item back if the receiver is gone.
    pub async fn send(&self, item: T, bytes: usize) -> Result<(), T> {
        loop {
            let notified = self.0.not_full.notified();
            {
                let mut s = self.0.state.lock().expect("queue lock");
                if s.closed {
                    return Err(item);
                }
                let fits = s.items.len() < self.0.max_items && s.bytes + bytes <= self.0.max_bytes;
                if fits || s.items.is_empty() {
                    s.bytes += bytes;
                    s.items.push_back((item, bytes));
                    drop(s);
                    self.0.not_empty.notify_one();
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    pub fn depth(&self) -> Depth {
        depth(&self.0)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.state.lock().expect("queue lock").closed = true;
        self.0.not_empty.notify_waiters();
        self.0.not_empty.notify_one();
    }
}

fn depth<T>(s: &Shared<T>) -> Depth {
    let st = s.state.lock().expect("queue lock");
    Depth {
        items: st.items.len(),
        bytes: st.bytes,
    }
}

impl<T> Receiver<T> {
    fn take(&self) -> Option<Option<T>> {
        let mut s = self.0.state.lock().expect("queue lock");
        match s.items.pop_front() {
            Some((item, bytes)) => {
                s.bytes -= bytes;
                drop(s);
                self.0.not_full.notify_one();
                Some(Some(item))
            }
            None if s.closed => Some(None),
            None => None,
        }
    }

    /// Next item; `None` once the sender is gone and the queue is drained.
    pub async fn recv(&self) -> Option<T> {
        loop {
            let notified = self.0.not_empty.notified();
            if let Some(r) = self.take() {
                return r;
            }
            notified.await;
        }
    }

    /// Like [`recv`](Self::recv) but gives up after `timeout` (`Err(())`).
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<Option<T>, ()> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| ())
    }

    /// An item if one is ready now.
    pub fn try_recv(&self) -> Option<T> {
        self.take().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.0.state.lock().expect("queue lock").items.is_empty()
    }

    pub fn depth(&self) -> Depth {
        depth(&self.0)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.state.lock().expect("queue lock").closed = true;
        self.0.not_full.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_by_bytes_and_items() {
        let (tx, rx) = bounded::<u32>(10, 100);
        tx.send(1, 60).await.unwrap();
        // 60 + 60 > 100: the second send waits until the first is taken.
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.send(2, 60)).await;
        assert!(blocked.is_err());
        assert_eq!(rx.recv().await, Some(1));
        tx.send(2, 60).await.unwrap();
        assert_eq!(rx.depth().bytes, 60);
    }

    #[tokio::test]
    async fn oversized_item_passes_when_empty() {
        let (tx, rx) = bounded::<u32>(10, 100);
        tx.send(1, 1000).await.unwrap();
        assert_eq!(rx.recv().await, Some(1));
    }

    #[tokio::test]
    async fn closes_when_sender_drops() {
        let (tx, rx) = bounded::<u32>(1, 100);
        tx.send(7, 1).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(7));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn item_bound_applies() {
        let (tx, rx) = bounded::<u32>(2, 1_000_000);
        tx.send(1, 1).await.unwrap();
        tx.send(2, 1).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), tx.send(3, 1))
                .await
                .is_err()
        );
        rx.try_recv();
        tx.send(3, 1).await.unwrap();
    }
}
