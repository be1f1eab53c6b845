// Included by the pass cases: a transaction manager without a database that logs what the
// engine asks of it, so the cases can run their functions and check the outcome.

#[allow(dead_code)]
mod noop {
    use std::sync::{Arc, Mutex};
    use tx_sqlx::TxError;
    use tx_sqlx::manager::{
        BeginOptions, BoxFuture, ManagerKey, PhysicalTransaction, TransactionManager,
    };

    type Log = Arc<Mutex<Vec<String>>>;

    /// Cheap `Clone`, like a `TxPool`.
    #[derive(Clone, Default)]
    pub struct Noop {
        id: Arc<()>,
        log: Log,
    }

    impl Noop {
        /// What a statement on this manager does to the engine: sends the deferred `BEGIN` (and
        /// savepoints) of the transaction bound to this task, if any. Logs nothing itself.
        pub async fn statement(&self) {
            if let Some(tx) = tx_sqlx::connection::bound_transaction(self.key()) {
                let _guard = tx.lock().await.expect("lock the bound transaction");
            }
        }

        /// What happened since the last call: `begin(..)`, `commit`, `rollback`, `savepoint`, ...
        pub fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    struct NoopTx {
        log: Log,
    }

    fn push(log: &Log, what: String) {
        log.lock().unwrap().push(what);
    }

    impl PhysicalTransaction for NoopTx {
        fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> {
            push(&self.log, "commit".into());
            Box::pin(async { Ok(()) })
        }
        fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), TxError>> {
            push(&self.log, "rollback".into());
            Box::pin(async { Ok(()) })
        }
        fn create_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
            push(&self.log, "savepoint".into());
            Box::pin(async { Ok(()) })
        }
        fn rollback_to_savepoint<'a>(
            &'a mut self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), TxError>> {
            push(&self.log, "rollback to savepoint".into());
            Box::pin(async { Ok(()) })
        }
        fn release_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, Result<(), TxError>> {
            push(&self.log, "release savepoint".into());
            Box::pin(async { Ok(()) })
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    impl TransactionManager for Noop {
        fn key(&self) -> ManagerKey {
            ManagerKey::of(&self.id)
        }
        fn begin(
            &self,
            options: BeginOptions,
        ) -> BoxFuture<'static, Result<Box<dyn PhysicalTransaction>, TxError>> {
            let ro = if options.read_only { " read only" } else { "" };
            push(&self.log, format!("begin {:?}{ro}", options.isolation));
            let log = self.log.clone();
            Box::pin(async move { Ok(Box::new(NoopTx { log }) as Box<dyn PhysicalTransaction>) })
        }
    }
}
