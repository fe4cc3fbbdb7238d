//! Orders from an operator (the admin API) to the workers, which own the
//! allocations: each worker takes its own mailbox at start and obeys
//! between batches, so nothing outside a worker touches its core.

use std::sync::{Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::core::{AllocId, SessionInfo};

/// Orders queued per worker before senders wait.
const DEPTH: usize = 16;

/// An operator's order to one worker.
#[derive(Debug)]
pub(super) enum Order {
    /// List its allocations (`user`'s only, if given).
    Sessions {
        user: Option<String>,
        reply: oneshot::Sender<Vec<SessionInfo>>,
    },
    /// Close the allocations `target` names; reply how many.
    Close {
        target: Target,
        reply: oneshot::Sender<usize>,
    },
}

/// Which allocations to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The one with this id (as in logs and the sessions list).
    Id(u64),
    /// Every one of this user (a REST credential's name part, or a static
    /// user).
    User(String),
}

/// Every worker's mailbox: the senders, and each receiver until its
/// worker takes it.
#[derive(Debug)]
pub struct Mailboxes {
    senders: Vec<mpsc::Sender<Order>>,
    receivers: Vec<Mutex<Option<mpsc::Receiver<Order>>>>,
}

impl Mailboxes {
    pub(super) fn new(workers: usize) -> Self {
        let (senders, receivers) = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::channel(DEPTH);
                (tx, Mutex::new(Some(rx)))
            })
            .unzip();
        Self { senders, receivers }
    }

    /// Worker `index`'s receiver (once).
    pub(super) fn take(&self, index: usize) -> Option<mpsc::Receiver<Order>> {
        self.receivers
            .get(index)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Every worker's allocations (`user`'s only, if given), oldest first.
    pub async fn sessions(&self, user: Option<String>) -> Vec<SessionInfo> {
        let mut replies = Vec::new();
        for tx in &self.senders {
            let (reply, rx) = oneshot::channel();
            let user = user.clone();
            if tx.send(Order::Sessions { user, reply }).await.is_ok() {
                replies.push(rx);
            }
        }
        let mut all = Vec::new();
        for rx in replies {
            all.extend(rx.await.unwrap_or_default());
        }
        all.sort_by_key(|s| (s.created_unix, s.id));
        all
    }

    /// Close what `target` names, on whichever workers own it; how many
    /// allocations were closed.
    pub async fn close(&self, target: Target) -> usize {
        let owner = match &target {
            Target::Id(id) => match AllocId::from_bits(*id) {
                Some(a) => Some(a.worker()),
                None => return 0,
            },
            Target::User(_) => None,
        };
        let mut replies = Vec::new();
        for (i, tx) in self.senders.iter().enumerate() {
            if owner.is_some_and(|o| o != i) {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            let target = target.clone();
            if tx.send(Order::Close { target, reply }).await.is_ok() {
                replies.push(rx);
            }
        }
        let mut closed = 0;
        for rx in replies {
            closed += rx.await.unwrap_or(0);
        }
        closed
    }
}

/// The next order, or never when this worker has no mailbox.
pub(super) async fn next(orders: &mut Option<mpsc::Receiver<Order>>) -> Option<Order> {
    match orders {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
