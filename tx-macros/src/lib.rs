//! The `#[transactional]` attribute of [tx](https://github.com/tx-rs/tx): Spring's
//! `@Transactional` for async Rust.
//!
//! Use it through `tx-sqlx` (`use tx_sqlx::prelude::*;`) or `tx-core`, which re-export it; see
//! [`macro@transactional`] for every key. The expansion is a thin call into tx-core's engine
//! (`tx_core::__private`): all transaction logic lives there.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use proc_macro::TokenStream;

// The phases, bottom-up: syntax helpers, the typed view of the attribute and the function,
// every rejection, the attribute's grammar, code generation; and where the runtime is.
mod ast;
mod attr;
mod expand;
mod helpers;
mod krate;
mod valid;

#[cfg(test)]
mod tests;

/// Runs an `async fn` in a transaction, the way Spring's `@Transactional` does.
///
/// ```no_run
/// use tx_sqlx::PgTxPool;
/// use tx_sqlx::prelude::*;
///
/// #[derive(Debug, thiserror::Error)]
/// enum AppError {
///     #[error(transparent)]
///     Tx(#[from] TxError),
///     #[error(transparent)]
///     Db(#[from] sqlx::Error),
///     #[error("risk check rejected the order: {reason}")]
///     RiskRejected { reason: String },
/// }
///
/// struct OrderService {
///     db: PgTxPool,
/// }
///
/// impl OrderService {
///     /// Both inserts commit together, or neither does.
///     #[transactional(manager = self.db)]
///     async fn place(&self, id: i64) -> Result<(), AppError> {
///         sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(id).execute(&self.db).await?;
///         sqlx::query("INSERT INTO order_items (order_id) VALUES ($1)").bind(id).execute(&self.db).await?;
///         Ok(())
///     }
/// }
/// # fn main() {}
/// ```
///
/// # Where it goes
///
/// On an `async fn` returning `Result<T, E>` where `E: From<`[`TxError`]`>` (so the engine can
/// report its own failures, such as [`TxError::Timeout`] or [`TxError::UnexpectedRollback`],
/// through your error type). `E` may be your own error type, [`TxError`] itself, or
/// `sqlx::Error` (tx-core implements `From<TxError> for sqlx::Error` with its `sqlx` feature,
/// which tx-sqlx enables: the engine's error is then inside `sqlx::Error::Io`, and converting
/// back with `TxError::from` gives it again). It goes on:
///
/// - free functions, generic functions;
/// - inherent methods taking `&self`, `&mut self`, `self`, or `self: Arc<Self>`;
/// - methods of a trait `impl` (and default bodies of trait methods);
/// - an `impl` block (inherent or trait): the attribute becomes the default for every `async fn`
///   in the block returning a `Result` (Spring's class-level annotation). A method with its own
///   `#[transactional(...)]` uses its own keys **instead** of the block's (they are not merged),
///   except `manager`: a method that names none keeps the block's, as a Spring method-level
///   annotation keeps the class's transaction manager. Plain `fn`s and `async fn`s not returning
///   a `Result` are left alone.
///
/// ```no_run
/// use tx_sqlx::PgTxPool;
/// use tx_sqlx::prelude::*;
///
/// #[transactional(manager = db, timeout = 2)]
/// async fn rename(db: &PgTxPool, id: i64, name: &str) -> Result<u64, sqlx::Error> {
///     let done = sqlx::query("UPDATE users SET name = $2 WHERE id = $1")
///         .bind(id)
///         .bind(name)
///         .execute(db)
///         .await?;
///     Ok(done.rows_affected())
/// }
///
/// # async fn caller(db: &PgTxPool) {
/// if let Err(e) = rename(db, 1, "ann").await {
///     // the engine's own error (here: the deadline passed, so nothing was committed)
///     if matches!(TxError::from(e), TxError::Timeout) { /* ... */ }
/// }
/// # }
/// # fn main() {}
/// ```
///
/// The signature, visibility, attributes and doc comments are kept as written. The returned
/// future is `Send` whenever the plain `async fn` would be (whatever `T` and `E` are, `Sync` or
/// not, also with `retry`), so a call can be moved into `tokio::spawn`.
///
/// `Result` means `Result<T, E>` under any path (`std::result::Result<T, E>`), or a
/// one-parameter alias such as `AppResult<T>` or `io::Result<T>` (its error type is then checked
/// through the alias). On an `impl` block, a type that is merely named `...Result` without type
/// parameters, such as sqlx's `PgQueryResult`, is not a `Result`: such a method is left alone.
///
/// # Keys
///
/// `#[transactional]` alone means `#[transactional(propagation = Required, isolation = Default)]`
/// on the default manager. Each key may be given once, separated by commas:
///
/// | key | values | default |
/// |---|---|---|
/// | `propagation` | `Required`, `RequiresNew`, `Nested`, `Supports`, `NotSupported`, `Mandatory`, `Never` (or Spring's `REQUIRED`, `REQUIRES_NEW`, `NESTED`, `SUPPORTS`, `NOT_SUPPORTED`, `MANDATORY`, `NEVER`; `Propagation::RequiresNew` also works) | `Required` |
/// | `isolation` | `Default`, `ReadUncommitted`, `ReadCommitted`, `RepeatableRead`, `Serializable` (or `DEFAULT`, `READ_UNCOMMITTED`, `READ_COMMITTED`, `REPEATABLE_READ`, `SERIALIZABLE`) | `Default` (the database's) |
/// | `timeout` | whole seconds `5`, or a string of `<n><unit>` parts with units `ms`, `s`, `m`, `h`: `"250ms"`, `"2s"`, `"1m30s"`; must be greater than zero | none |
/// | `read_only` | `read_only` alone (= `true`), `read_only = true`, `read_only = false` | `false` |
/// | `rollback_for` | a pattern over the error type, `\|` allowed | every `Err` rolls back |
/// | `no_rollback_for` | a pattern over the error type, `\|` allowed | (none) |
/// | `manager` | a registered name `"orders"`, or an expression `self.db`, `db()`, `POOL.clone()` | the default manager |
/// | `name` | a string literal | `Type::method` for a method, `module::path::function` for a free function |
/// | `retry` | a non-negative integer: how many times to re-run the call | `0` |
///
/// ## `propagation`
///
/// How the call relates to a transaction already running in this task:
///
/// | behaviour | a transaction exists | none exists |
/// |---|---|---|
/// | `Required` | join it | begin one |
/// | `RequiresNew` | suspend it, begin an independent one on another connection | begin one |
/// | `Nested` | savepoint in it | begin one |
/// | `Supports` | join it | run without one |
/// | `NotSupported` | suspend it, run without one | run without one |
/// | `Mandatory` | join it | `Err(TxError::NoTransaction)` |
/// | `Never` | `Err(TxError::ExistingTransaction)` | run without one |
///
/// ```no_run
/// # use tx_sqlx::prelude::*;
/// # use tx_sqlx::PgTxPool;
/// # struct AuditService { db: PgTxPool }
/// impl AuditService {
///     /// Kept even when the caller's transaction rolls back.
///     #[transactional(propagation = REQUIRES_NEW, manager = self.db)]
///     async fn record(&self, note: &str) -> Result<(), TxError> {
///         sqlx::query("INSERT INTO audit (note) VALUES ($1)").bind(note).execute(&self.db).await?;
///         Ok(())
///     }
/// }
/// # fn main() {}
/// ```
///
/// ## `isolation`, `read_only`, `timeout`
///
/// Applied when the call begins a transaction (a participant runs with its owner's settings).
/// Past the timeout, counted from the transaction's start, the transaction is rolled back and
/// the call returns `TxError::Timeout` (through `E`), even while the body is still awaiting.
///
/// ```no_run
/// # use tx_sqlx::prelude::*;
/// # use tx_sqlx::PgTxPool;
/// #[transactional(isolation = Serializable, read_only, timeout = "250ms")]
/// async fn report() -> Result<i64, TxError> {
///     Ok(0)
/// }
///
/// #[transactional(isolation = REPEATABLE_READ, read_only = false, timeout = 30)]
/// async fn rebuild() -> Result<(), TxError> {
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// ## `rollback_for`, `no_rollback_for`
///
/// By default every `Err` rolls back and every `Ok` commits (a panic always rolls back). The
/// patterns are matched against `&E` (so `AppError::RiskRejected { .. }` matches by reference):
///
/// | given | an `Err(e)` rolls back when |
/// |---|---|
/// | neither | always |
/// | `no_rollback_for = N` | `!matches!(e, N)`: matching errors commit the work done so far |
/// | `rollback_for = R` | `matches!(e, R)`: other errors commit |
/// | both | `matches!(e, R) && !matches!(e, N)` |
///
/// The call still returns the `Err` either way. A pattern that cannot match the error type is a
/// compile error at the pattern.
///
/// ```no_run
/// # use tx_sqlx::prelude::*;
/// # use tx_sqlx::PgTxPool;
/// # #[derive(Debug)] enum AppError { Tx(TxError), RiskRejected { reason: String }, OutOfStock(u32), Db(String) }
/// # impl From<TxError> for AppError { fn from(e: TxError) -> Self { AppError::Tx(e) } }
/// /// The order is kept (waiting for audit) when the risk check says no.
/// #[transactional(no_rollback_for = AppError::RiskRejected { .. } | AppError::OutOfStock(_))]
/// async fn place_order() -> Result<(), AppError> {
///     Err(AppError::RiskRejected { reason: "amount".into() })
/// }
///
/// /// Only database errors roll back; anything else commits.
/// #[transactional(rollback_for = AppError::Db(_) | AppError::Tx(_))]
/// async fn import() -> Result<(), AppError> {
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// ## `manager`
///
/// Which transaction manager (for tx-sqlx, which `TxPool`) the scope uses:
///
/// - omitted: the default manager, set once with `set_default_manager(pool)`;
/// - `manager = "orders"`: the manager registered with `register_manager("orders", pool)`;
/// - `manager = EXPR`: any expression giving the manager, or a reference or smart pointer to
///   it (`db: &'a PgTxPool`, `Box<PgTxPool>`), such as `self.db` or `db()`. It is evaluated once
///   per call, before the body runs. `self.field` in a `&self` method is borrowed for the call;
///   any other expression has its handle cloned (an `Arc` increment for a `TxPool`), so it may
///   borrow `self` even in a `&mut self` or `self: Arc<Self>` method.
///
/// ```no_run
/// # use tx_sqlx::prelude::*;
/// # use tx_sqlx::PgTxPool;
/// # static POOL: std::sync::OnceLock<PgTxPool> = std::sync::OnceLock::new();
/// fn db() -> &'static PgTxPool {
///     POOL.get().expect("pool initialised at start-up")
/// }
///
/// #[transactional(manager = db())]
/// async fn by_expression() -> Result<(), TxError> { Ok(()) }
///
/// #[transactional(manager = "audit")] // tx_sqlx::register_manager("audit", pool)
/// async fn by_name() -> Result<(), TxError> { Ok(()) }
/// # fn main() {}
/// ```
///
/// ## `name`
///
/// The transaction's name, seen in logs and `TransactionStatus::name()`. Default, as Spring's
/// `Class.method`: `Type::method` for a method (`"OrderService::place"`, also in a trait impl,
/// where `Type` is the implementing type; `Trait::method` for a trait's default body), so two
/// services with a `record` method are told apart; and the module path and the function's name
/// for a free function (`"shop::orders::place"`). The type is read once per function, on its
/// first call, from `std::any::type_name`; a function with neither `self` nor `Self` in its
/// signature is taken as a method when its enclosing item is named as a type (`CamelCase`).
///
/// ```no_run
/// # use tx_sqlx::prelude::*;
/// # use tx_sqlx::PgTxPool;
/// #[transactional(name = "orders.place")]
/// async fn place() -> Result<(), TxError> { Ok(()) }
/// # fn main() {}
/// ```
///
/// ## `retry`
///
/// `retry = N` re-runs the whole call, up to `N` more times with jittered exponential backoff,
/// when the transaction it began fails with a retryable error (`TxError::is_retryable()`:
/// serialization failures, deadlocks). A call that joins an existing transaction never retries
/// on its own: the owner of the transaction decides.
///
/// The returned error says which failure the rollback was for: the call is re-run when its
/// transaction rolled back and the error is, or carries, a retryable failure of that
/// transaction: of a statement, `BEGIN` or `COMMIT`, also of a statement of a `Nested` scope
/// that rolled back to its savepoint and whose error the body passed on with `?`. The first
/// `TxError` or `sqlx::Error` found in the error and its `source()` chain decides (an error
/// type with a `Tx(#[from] TxError)` variant, `#[error(transparent)]` or not, exposes it). Not
/// re-run: a call that committed (an error matching `no_rollback_for`), or whose error is
/// another one (a timeout, an unexpected rollback, its own), also after a `Nested` scope
/// handled a retryable failure, nor for a retryable failure of a `RequiresNew` call inside
/// (which has its own transaction and its own `retry`). For an error type that exposes no
/// such error, the call is re-run when a retryable failure of its transaction was not undone
/// by a `Nested` rollback.
///
/// Each attempt runs a fresh body, so the parameters the body uses are cloned per attempt:
/// with `retry`, by-value parameters (and a by-value `self`, such as `self: Arc<Self>`) must be
/// `Clone`; shared references (`&self`, `&str`) are simply reused. `&mut self` and `&mut`
/// parameters are a compile error with `retry`: one exclusive borrow cannot be handed to
/// several attempts.
///
/// ```no_run
/// # use tx_sqlx::prelude::*;
/// # use tx_sqlx::PgTxPool;
/// # struct Counter { db: PgTxPool }
/// impl Counter {
///     #[transactional(isolation = Serializable, retry = 5, manager = self.db)]
///     async fn increment(&self, key: String) -> Result<(), TxError> {
///         sqlx::query("UPDATE counters SET n = n + 1 WHERE key = $1")
///             .bind(&key)
///             .execute(&self.db)
///             .await?;
///         Ok(())
///     }
/// }
/// # fn main() {}
/// ```
///
/// # On an `impl` block
///
/// ```no_run
/// # use tx_sqlx::prelude::*;
/// # use tx_sqlx::PgTxPool;
/// # struct UserQueries { db: PgTxPool }
/// #[transactional(read_only, manager = self.db)]
/// impl UserQueries {
///     /// read-only, from the block
///     async fn count(&self) -> Result<i64, TxError> { Ok(0) }
///
///     /// its own keys replace the block's (not read-only here); it names no manager, so it
///     /// keeps the block's `self.db`
///     #[transactional(isolation = Serializable)]
///     async fn rename(&self, id: i64, name: &str) -> Result<(), TxError> { Ok(()) }
///
///     /// not a `Result` (sqlx's query result): left alone
///     async fn touch(&self) -> sqlx::postgres::PgQueryResult { Default::default() }
///
///     /// not async: left alone
///     fn table(&self) -> &'static str { "users" }
/// }
/// # fn main() {}
/// ```
///
/// # What it expands to
///
/// A thin call into the engine: the definition is a `static` (built at compile time, but for the
/// default name, which is read on the first call), so a call allocates nothing for it; the body
/// becomes a closure returning an `async move` block, and the rollback rule a `fn(&E) -> bool`.
/// Roughly (helper names shortened):
///
/// ```text
/// #[transactional(propagation = RequiresNew, timeout = "2s", no_rollback_for = AppError::Warn, manager = self.db)]
/// async fn add(&self, user: User) -> Result<u64, AppError> { BODY }
///
/// // becomes, with `__private` being `::tx_sqlx::__private` or `::tx_core::__private`:
/// async fn add(&self, user: User) -> Result<u64, AppError> {
///     // passes straight through to `__private::transactional`; its bound
///     // `E: TransactionalError` is what reports a missing `From<TxError>` at `AppError`
///     fn run<'a, T, E: __private::TransactionalError, F, Fut>(..) -> impl Future<..> + 'a { .. }
///
///     let def: &'static TransactionDefinition = {
///         fn here() {} // its type name, `app::UserService::add::{{closure}}::here`, gives the name
///         static DEF: LazyDefinition = LazyDefinition::new(
///             Propagation::RequiresNew, Isolation::Default,
///             Some(Duration::from_millis(2000)), false,
///         );
///         DEF.get(here, concat!(module_path!(), "::add"), true) // named on the first call
///     };
///     // `manager = self.field` on `&self` is borrowed; any other expression is evaluated once
///     // per call and cloned (`(EXPR).clone()`), so `&mut self`, `self` and parameters work; the
///     // method call reaches the manager behind a reference or a `Box` (`ManagerRef::Default`
///     // or `ManagerRef::Named("..")` without `manager = EXPR`)
///     let pick = __private::pick::Pick(&self.db);
///     let manager = { use __private::pick::*; (&pick).__tx_manager_ref() };
///     let make_body = move || async move {
///         // dead code fixing the block's output type to `Result<u64, AppError>`, so `?` and
///         // `return` inside BODY convert exactly as in the original function
///         BODY
///     };
///     run::<_, AppError, _>(manager, def, |e: &AppError| !matches!(e, AppError::Warn), make_body).await
/// }
/// ```
///
/// With `retry = N` the closure clones what the body uses by value,
/// `move || { let user = user.clone(); async move { BODY } }`, and is given to
/// `__private::transactional_retry(manager, def, N, rollback_on, classify, make_body)`, where
/// `classify` is `|e: &AppError| (&&&__private::Probe(e)).__tx_verdict()`: autoref
/// specialisation picks, by the error type, the engine's and driver's errors, any other
/// `std::error::Error` (its `source()` chain), or nothing to see.
///
/// The runtime path is found with `proc-macro-crate`: `tx_sqlx` when the crate depends on
/// `tx-sqlx` (also when it depends on both), else `tx_core`, following renames in `Cargo.toml`.
///
/// # Compile-time errors
///
/// Misuse is reported at the offending token, saying what is allowed. The attribute itself
/// rejects, in this order:
///
/// - **where it is**: on a struct, const, trait definition or anything else that is not a
///   function or an `impl` block; on a function declaration without a body;
/// - **the function**: `#[transactional]` given twice on it; a function that is not `async`;
///   one not returning a `Result`; `retry` with `&mut self` or a `&mut` parameter; in an
///   annotated `impl` block, a method without a `self` receiver whose manager is an expression
///   of `self`;
/// - **the keys**: something other than `key = value`; an unknown key (the valid keys are
///   listed, with a "did you mean" for Spring spellings such as `readOnly`); a duplicate key; a
///   key other than `read_only` without a value; a method's own attribute written
///   `#[transactional = ..]`;
/// - **the values**: an unknown propagation or isolation (the valid ones are listed), or one
///   in quotes; a zero, negative, fractional or unparseable timeout; a negative or non-integer
///   `retry`; `read_only = "yes"`; a missing pattern; an empty manager name, or a literal as
///   the manager; a `name` that is not a string literal.
///
/// The compiler checks the rest on the expansion, with messages that say what to do: an error
/// type without `From<TxError>`; a pattern that does not match the error type; a by-value
/// parameter that is not `Clone` under `retry`; a `manager` that is not a transaction manager;
/// a return type merely named `...Result` that is not a `Result`.
///
// Relative links: this page is rendered as `tx_macros/attr.transactional.html` and, re-exported,
// as `tx_core/...` and `tx_sqlx/...`, all beside `tx_core/` in a local `cargo doc`. (tx-macros
// cannot depend on tx-core, which depends on it, so intra-doc links would not resolve.)
/// [`TxError`]: ../tx_core/enum.TxError.html
/// [`TxError::Timeout`]: ../tx_core/enum.TxError.html#variant.Timeout
/// [`TxError::UnexpectedRollback`]: ../tx_core/enum.TxError.html#variant.UnexpectedRollback
#[proc_macro_attribute]
pub fn transactional(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(args.into(), item.into(), &krate::private_path()).into()
}
