//! One logical transaction as the engine tracks it: its manager, its lazily begun physical
//! transaction, its savepoint stack, its rollback-only mark and its deadline.
//!
//! The physical `BEGIN` is deferred to the first statement (see [`crate::connection`]): a
//! transactional call whose body never touches the database costs no round trip and holds no
//! connection. Savepoints are deferred the same way, so a `Nested` scope that runs no statement
//! sends no `SAVEPOINT`.
//!
//! The transaction has one connection, behind an async mutex. Who may wait for it:
//! statements of one task (concurrent futures under `join!`) take turns, each wait bounded by
//! the deadline. A fetch stream between two rows, or a `TxConnection` guard, holds it for user
//! code: a request of the same task would wait for itself, so it is refused at once. When the
//! transaction completes its body is done, so a held connection is a leaked guard or stream:
//! also refused at once, and the transaction is rolled back when that holder lets go.
//!
//! Savepoints of concurrent scopes: SQL savepoints nest, so the savepoints actually sent on
//! the connection always form one chain of enclosing scopes. A statement runs only when every
//! savepoint sent is its own scope's or an enclosing one's; otherwise (a sibling scope's
//! savepoint is open) it is refused with [`TxError::ConcurrentScopes`]. So each savepoint is
//! resolved on its own: rolling one back undoes exactly its scope's work.

mod lock;
mod logical;
mod materialize;
mod savepoints;
mod slot;

pub(crate) use logical::{
    Binding, SavepointCompletion, Scope, ScopeKind, Transaction, chain_holds_writer,
};
pub(crate) use slot::{Holder, Physical, Request, Retryable, Slot};
