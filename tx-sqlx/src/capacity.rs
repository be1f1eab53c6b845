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
use std::sync::atomic::{AtomicU32, Ordering};
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
    /// The reservation's size, read without the lock on every begin (0: no gate).
    reserved: AtomicU32,
    /// The transactions held by tasks waiting for a connection (each holds one connection),
    /// with how many waiting begins hold each (concurrent scopes of one task, e.g. `join!`,
    /// share their suspended transaction).
    waiting: Mutex<HashMap<usize, usize>>,
}

struct Gate {
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
            permits: Arc::new(Semaphore::new((max_connections - reserved) as usize)),
        });
        let mut current = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        *current = gate;
        self.reserved.store(reserved, Ordering::Release);
    }

    /// How many connections are reserved for inner transactions.
    pub(crate) fn reserved(&self) -> u32 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Admits a transaction of a task that holds no connection of `pool` (waits while the
    /// unreserved connections are all taken by such transactions).
    pub(crate) async fn admit<DB: Database>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<Admission, TxError> {
        if self.reserved() == 0 {
            return Ok(None);
        }
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

    /// Registers a begin whose task holds the connections of the `held` transactions (see
    /// `BeginOptions::suspended_connections`) while it waits for another connection of
    /// `pool`; fails with [`TxError::PoolStarvation`] when every connection of the pool is
    /// then held by such waiting begins. The registration ends when the returned guard drops.
    pub(crate) fn wait_holding<'a, DB: Database>(
        &'a self,
        pool: &sqlx::Pool<DB>,
        held: &'a [usize],
        name: &str,
    ) -> Result<Waiting<'a>, TxError> {
        let max = pool.options().get_max_connections();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        for &tx in held {
            *waiting.entry(tx).or_default() += 1;
        }
        // Each entry is one connection that cannot come back while its holder waits.
        let stuck = waiting.len();
        // sqlx's idle count can read as wrapped below zero for a moment while a returned
        // connection changes hands (taken before it is counted): that is no idle connection.
        let idle = pool.num_idle();
        let none_idle = pool.size() >= max && (idle == 0 || idle > max as usize);
        if stuck >= max as usize && none_idle {
            unregister(&mut waiting, held);
            tracing::debug!(
                target: "tx",
                "pool starvation: all {max} connections are held by transactions whose tasks \
                 wait for another one; failing the begin of [{name}]"
            );
            return Err(TxError::PoolStarvation {
                max_connections: max,
                name: Cow::Owned(name.to_owned()),
            });
        }
        Ok(Waiting {
            capacity: self,
            held,
        })
    }
}

fn unregister(waiting: &mut HashMap<usize, usize>, held: &[usize]) {
    for tx in held {
        if let Some(n) = waiting.get_mut(tx) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(tx);
            }
        }
    }
}

/// A registered waiting begin (see [`Capacity::wait_holding`]).
pub(crate) struct Waiting<'a> {
    capacity: &'a Capacity,
    held: &'a [usize],
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .capacity
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unregister(&mut waiting, self.held);
    }
}
