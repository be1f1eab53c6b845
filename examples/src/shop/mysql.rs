//! The shop on MariaDB/MySQL, in a database of its own; the audit log is another connection
//! of the same pool.

use tx_sqlx::TxError;

use super::error::ShopError;

super::shop_backend!(
    MySql,
    "id BIGINT AUTO_INCREMENT PRIMARY KEY",
    question_marks,
    server: "database",
    drop_database
);
