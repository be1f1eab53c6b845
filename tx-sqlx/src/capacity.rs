//! Who may take a pool's connections for transactions: the reservation for inner
//! (`RequiresNew`) transactions, and the detection of pool starvation.
//!
//! A task inside a transaction that begins a `RequiresNew` one holds a connection while it
//! waits for a second. When every connection of the pool is held by such waiting tasks, none
//! can come back: this is detected when the last of them starts waiting, which fails at once
//! with [`TxError::PoolStarvation`] instead of waiting out the acquire timeout. A reservation
//! ([`TxPool::reserve_for_nested`](crate::TxPool::reserve_for_nested)) prevents the situation:
//! transactions of tasks that hold no connection of the pool may only take
//! `max_connections - reserved` connections, so inner transactions always find one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::Database;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tx_core::{Operation, TxError};

use crate::error::db_error;

/// The admission state of one pool (shared by every `TxPool` on it).
#[derive(Default)]
pub(crate) struct Capacity {
    /// Admits the transactions of tasks holding no connection of the pool: `max_connections -
    /// reserved` permits, held until the transaction's connection is back. `None`: no
    /// reservation.
    gate: Mutex<Option<Gate>>,
    /// Per task, how many connections each of its waiting begins holds (several when the task
    /// runs scopes concurrently, e.g. `join!`).
    waiting: Mutex<HashMap<tokio::task::Id, Vec<u32>>>,
}

struct Gate {
    reserved: u32,
    permits: Arc<Semaphore>,
}

/// A top-level transaction's share of the pool (a permit of the gate), released when the
/// transaction's connection goes back.
pub(crate) type Admission = Option<OwnedSemaphorePermit>;

impl Capacity {
    /// Reserves `reserved` of the pool's `max_connections` for inner transactions.
    ///
    /// # Panics
    ///
    /// When `reserved >= max_connections` (no transaction could ever begin).
    pub(crate) fn reserve(&self, max_connections: u32, reserved: u32) {
        assert!(
            reserved < max_connections,
            "TxPool::reserve_for_nested({reserved}) on a pool of {max_connections} connections: \
             the reservation must leave at least one connection for outer transactions \
             (reserve fewer, or raise max_connections)"
        );
        let gate = (reserved > 0).then(|| Gate {
            reserved,
            permits: Arc::new(Semaphore::new((max_connections - reserved) as usize)),
        });
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = gate;
    }

    /// How many connections are reserved for inner transactions.
    pub(crate) fn reserved(&self) -> u32 {
        self.gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |g| g.reserved)
    }

    /// Admits a transaction of a task that holds no connection of `pool` (waits while the
    /// unreserved connections are all taken by such transactions).
    pub(crate) async fn admit<DB: Database>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<Admission, TxError> {
        let Some(permits) = self
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|g| Arc::clone(&g.permits))
        else {
            return Ok(None);
        };
        if let Ok(permit) = Arc::clone(&permits).try_acquire_owned() {
            return Ok(Some(permit));
        }
        // Bounded like the pool's own acquire, and ended by the pool closing.
        let mut closed = pool.close_event();
        let wait = closed.do_until(permits.acquire_owned());
        match tokio::time::timeout(pool.options().get_acquire_timeout(), wait).await {
            Ok(Ok(Ok(permit))) => Ok(Some(permit)),
            // The semaphore is never closed; the pool was.
            Ok(Ok(Err(_))) | Ok(Err(_)) => Err(TxError::PoolClosed),
            Err(_) => Err(db_error(Operation::Begin, sqlx::Error::PoolTimedOut)),
        }
    }

    /// Registers a begin that holds `held` connections of `pool` while it waits for another;
    /// fails with [`TxError::PoolStarvation`] when every connection of the pool is then held
    /// by such waiting begins. The registration ends when the returned guard drops.
    pub(crate) fn wait_holding<DB: Database>(
        &self,
        pool: &sqlx::Pool<DB>,
        held: u32,
        name: &Cow<'static, str>,
    ) -> Result<Waiting<'_>, TxError> {
        // Outside a task there is no sound way to tell concurrent scopes of one holder apart:
        // do not count it (the begin waits as it would without the detection).
        let Some(task) = tokio::task::try_id() else {
            return Ok(Waiting { this: None });
        };
        let max = pool.options().get_max_connections();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.entry(task).or_default().push(held);
        // Concurrent scopes of one task may hold the same suspended connection: count each
        // task's largest holding only (never more than it holds).
        let stuck: u64 = waiting
            .values()
            .map(|h| u64::from(h.iter().copied().max().unwrap_or(0)))
            .sum();
        let none_idle = pool.size() >= max && pool.num_idle() == 0;
        if stuck >= u64::from(max) && none_idle {
            remove(&mut waiting, task, held);
            tracing::debug!(
                target: "tx",
                "pool starvation: all {max} connections are held by tasks waiting for another \
                 one; failing the begin of [{name}]"
            );
            return Err(TxError::PoolStarvation {
                max_connections: max,
                name: name.clone(),
            });
        }
        Ok(Waiting {
            this: Some((self, task, held)),
        })
    }
}

fn remove(waiting: &mut HashMap<tokio::task::Id, Vec<u32>>, task: tokio::task::Id, held: u32) {
    if let Some(h) = waiting.get_mut(&task) {
        if let Some(pos) = h.iter().position(|&x| x == held) {
            h.swap_remove(pos);
        }
        if h.is_empty() {
            waiting.remove(&task);
        }
    }
}

/// A registered waiting begin (see [`Capacity::wait_holding`]).
pub(crate) struct Waiting<'a> {
    this: Option<(&'a Capacity, tokio::task::Id, u32)>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some((capacity, task, held)) = self.this.take() {
            let mut waiting = capacity
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            remove(&mut waiting, task, held);
        }
    }
}
