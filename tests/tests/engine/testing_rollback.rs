//! Test transactions (`tx_sqlx::testing::rollback`) on SQLite, PostgreSQL and MariaDB: the
//! body and the code under test see their writes, nothing is left afterwards (also after a
//! panic or a dropped test); `RequiresNew` and `NotSupported` scopes run on savepoints of the
//! test transaction; hooks run when their scope would have committed; two test transactions
//! in parallel do not see each other's rows; a cancelled scope's work is undone when the
//! savepoint around it is released; a scope that swallowed a failed statement ends as in
//! production.
//!
//! The cases (`testing_rollback/cases.rs`) are compiled once per backend.

/// The `#[tokio::test]`s of one backend: the cases every backend runs and `[$extra]`;
/// `$pool(max)` gives its pool (`None`: server missing, skipped) and a guard to keep alive.
macro_rules! tests {
    ($pool:expr, [$($extra:ident),* $(,)?]) => {
        tests!(@cases $pool, [
            writes_are_visible_then_gone,
            failures_roll_back_to_their_savepoint,
            panic_rolls_back,
            scopes_inside_the_test,
            cancelled_scopes_are_undone,
            a_swallowed_failure_ends_as_in_production,
            $($extra,)*
        ]);
    };
    (@cases $pool:expr, [$($case:ident),* $(,)?]) => {
        mod tests {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some((db, _guard)) = $pool(4).await else {
                        return;
                    };
                    super::$case(db).await;
                }
            )*
        }
    };
}

// Parallel test transactions on one SQLite database would wait for each other's write lock.
#[allow(dead_code)]
mod sqlite {
    use tx_sqlx::SqliteTxPool as Db;

    const ID_COLUMN: &str = "id INTEGER PRIMARY KEY AUTOINCREMENT";

    fn sql(statement: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(statement.to_owned())
    }

    include!("testing_rollback/cases.rs");

    async fn pool(max: u32) -> Option<(Db, tempfile::TempDir)> {
        Some(tx_tests::sqlite_pool(max).await)
    }

    tests!(super::pool, []);
}

mod postgres {
    use tx_sqlx::PgTxPool as Db;

    const ID_COLUMN: &str = "id BIGSERIAL PRIMARY KEY";

    fn sql(statement: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(statement.to_owned())
    }

    include!("testing_rollback/cases.rs");

    async fn pool(max: u32) -> Option<(Db, ())> {
        Some((tx_tests::pg_pool(max).await?, ()))
    }

    tests!(super::pool, [parallel_tests_are_isolated]);
}

mod mysql {
    use tx_sqlx::MySqlTxPool as Db;

    const ID_COLUMN: &str = "id BIGINT AUTO_INCREMENT PRIMARY KEY";

    /// `?` placeholders instead of `$1`, `$2`, ... (each used once, in binding order).
    fn sql(statement: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(tx_examples::per_backend::question_marks(statement))
    }

    include!("testing_rollback/cases.rs");

    async fn pool(max: u32) -> Option<(Db, ())> {
        Some((tx_tests::mysql_pool(max).await?, ()))
    }

    tests!(super::pool, [parallel_tests_are_isolated]);
}
