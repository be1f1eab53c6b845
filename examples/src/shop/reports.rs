//! What each case of the demo reports: every call's result and the rows that prove it, and
//! how the demo prints it. Nothing here depends on the backend.

use std::fmt;

use super::connect::Backend;
use super::error::ShopError;
use super::model::{
    Account, AuditEntry, BATCH_SIZE, BatchResult, DeliveryFailure, Gift, Order, Product,
};

/// One service call and its result.
#[derive(Debug)]
pub struct Step<T> {
    /// What was called, in words.
    pub call: String,
    /// What it returned.
    pub result: Result<T, ShopError>,
    /// The `Ok` value in words.
    shown: String,
}

impl<T> Step<T> {
    pub(crate) fn new(
        call: &str,
        result: Result<T, ShopError>,
        show: impl FnOnce(&T) -> String,
    ) -> Self {
        let shown = result.as_ref().map(show).unwrap_or_default();
        Step {
            call: call.to_owned(),
            result,
            shown,
        }
    }
}

impl<T> fmt::Display for Step<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "  {:<40} -> ", self.call)?;
        match &self.result {
            Ok(_) if self.shown.is_empty() => f.write_str("Ok"),
            Ok(_) => write!(f, "Ok: {}", self.shown),
            Err(e) => write!(f, "Err: {e}"),
        }
    }
}

pub(crate) fn unit(_: &()) -> String {
    String::new()
}

pub(crate) fn order(id: &i64) -> String {
    format!("order #{id}")
}

/// Writes one case's block: its title, then steps, rows and indented lines, in the demo's
/// columns. Like `fmt::DebugStruct`, it keeps the first error and [`Section::finish`] returns it.
struct Section<'a, 'b> {
    f: &'a mut fmt::Formatter<'b>,
    result: fmt::Result,
}

impl<'a, 'b> Section<'a, 'b> {
    fn new(f: &'a mut fmt::Formatter<'b>, title: impl fmt::Display) -> Self {
        let result = writeln!(f, "{title}");
        Section { f, result }
    }

    /// One line as it is: a step, or a line in words.
    fn line(&mut self, line: impl fmt::Display) -> &mut Self {
        if self.result.is_ok() {
            self.result = writeln!(self.f, "{line}");
        }
        self
    }

    fn steps<T>(&mut self, steps: &[Step<T>]) -> &mut Self {
        steps.iter().fold(self, |s, step| s.line(step))
    }

    /// A value under a label in the rows' column; an empty label continues the rows above.
    fn field(&mut self, label: &str, value: impl fmt::Display) -> &mut Self {
        self.line(format_args!("    {label:<8} {value}"))
    }

    /// A list of rows, the label on the first one, or `none`.
    fn rows<T: fmt::Display>(&mut self, label: &str, rows: &[T]) -> &mut Self {
        if rows.is_empty() {
            return self.field(label, "none");
        }
        rows.iter().enumerate().fold(self, |s, (i, row)| {
            s.field(if i == 0 { label } else { "" }, row)
        })
    }

    /// What happened around a step, one event a line.
    fn timeline(&mut self, events: &[String]) -> &mut Self {
        events
            .iter()
            .fold(self, |s, e| s.line(format_args!("      . {e}")))
    }

    fn finish(&mut self) -> fmt::Result {
        self.result
    }
}

/// Bank transfers.
#[derive(Debug)]
pub struct TransferReport {
    /// The three transfers.
    pub steps: Vec<Step<()>>,
    /// Alice and bob afterwards.
    pub accounts: Vec<Account>,
    /// Their total before.
    pub total_before: i64,
    /// Their total after.
    pub total_after: i64,
}

impl fmt::Display for TransferReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Section::new(
            f,
            "[1] Bank transfer: debit and credit in one REQUIRED transaction",
        )
        .steps(&self.steps)
        .rows("rows:", &self.accounts)
        .line(format_args!(
            "    total {} before, {} after: no money lost",
            self.total_before, self.total_after
        ))
        .finish()
    }
}

/// Order placement.
#[derive(Debug)]
pub struct OrderReport {
    /// The three purchases.
    pub steps: Vec<Step<i64>>,
    /// The laptop afterwards.
    pub product: Product,
    /// Zhang san afterwards.
    pub account: Account,
    /// Zhang san's orders.
    pub orders: Vec<Order>,
    /// The audit entries of zhang san's attempts (each written in its own transaction).
    pub audit: Vec<AuditEntry>,
}

impl fmt::Display for OrderReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Section::new(
            f,
            "[2] Order placement: stock, order and payment, all or nothing",
        )
        .steps(&self.steps)
        .field("rows:", &self.product)
        .field("", &self.account)
        .rows("", &self.orders)
        .rows("audit:", &self.audit)
        .finish()
    }
}

/// The audit log survives the order's rollback.
#[derive(Debug)]
pub struct AuditReport {
    /// The failing purchase.
    pub step: Step<i64>,
    /// Li si's audit entries.
    pub audit: Vec<AuditEntry>,
    /// Li si's orders.
    pub orders: Vec<Order>,
    /// Li si afterwards.
    pub account: Account,
    /// Whether the audit log is in a second database.
    pub audit_in_second_database: bool,
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.audit_in_second_database {
            "in a second SQLite database with its own TxPool"
        } else {
            "on another connection of the same pool"
        };
        Section::new(f, format_args!("[3] Audit log: REQUIRES_NEW, {place}"))
            .line(&self.step)
            .rows("audit:", &self.audit)
            .rows("orders:", &self.orders)
            .field("account:", &self.account)
            .finish()
    }
}

/// The gift in a NESTED scope.
#[derive(Debug)]
pub struct GiftReport {
    /// The purchase: the order id and why the gift was dropped.
    pub step: Step<(i64, Option<String>)>,
    /// Wang wu's orders.
    pub orders: Vec<Order>,
    /// Gifts attached to them.
    pub gifts: Vec<Gift>,
    /// The phone afterwards.
    pub product: Product,
    /// The gift afterwards.
    pub gift_product: Product,
    /// Wang wu afterwards.
    pub account: Account,
}

impl fmt::Display for GiftReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Section::new(f, "[4] Gift: NESTED, the gift rolls back to its savepoint")
            .line(&self.step)
            .rows("rows:", &self.orders)
            .field("", format_args!("gifts: {}", self.gifts.len()))
            .field("", &self.product)
            .field("", &self.gift_product)
            .field("", &self.account)
            .finish()
    }
}

/// The risk check.
#[derive(Debug)]
pub struct RiskReport {
    /// The rejected order (an `Err` that commits).
    pub rejected: Step<i64>,
    /// The order while the risk service is down (rolls back).
    pub down: Step<i64>,
    /// Zhao liu's orders.
    pub orders: Vec<Order>,
    /// The tablet afterwards.
    pub product: Product,
}

impl fmt::Display for RiskReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Section::new(
            f,
            "[5] Risk check: no_rollback_for = ShopError::RiskRejected { .. }",
        )
        .line(&self.rejected)
        .line(&self.down)
        .rows("rows:", &self.orders)
        .field("", &self.product)
        .finish()
    }
}

/// The MQ message after commit, and the hook phases.
#[derive(Debug)]
pub struct HooksReport {
    /// The purchase that commits.
    pub committed: Step<i64>,
    /// What happened around it, in order.
    pub committed_timeline: Vec<String>,
    /// The purchase that rolls back.
    pub rolled_back: Step<i64>,
    /// What happened around it, in order.
    pub rolled_back_timeline: Vec<String>,
    /// Every MQ message sent.
    pub sent: Vec<String>,
    /// Sun qi's orders.
    pub orders: Vec<Order>,
    /// Sun qi afterwards.
    pub account: Account,
}

impl fmt::Display for HooksReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Section::new(
            f,
            "[6] MQ after commit: register_synchronization + after_commit",
        )
        .line(&self.committed)
        .timeline(&self.committed_timeline)
        .line(&self.rolled_back)
        .timeline(&self.rolled_back_timeline)
        .rows("MQ:", &self.sent)
        .rows("rows:", &self.orders)
        .field("", &self.account)
        .finish()
    }
}

/// Batch delivery.
#[derive(Debug)]
pub struct BatchReport {
    /// What `deliver_all` returned.
    pub result: BatchResult,
    /// The orders created without an address.
    pub expected_failures: Vec<i64>,
    /// Book orders in state `DELIVERED`.
    pub delivered_rows: usize,
    /// Book orders still `PAID`.
    pub paid_rows: usize,
    /// Shipments of book orders.
    pub shipments: i64,
    /// The `delivery_failure` table.
    pub failure_rows: Vec<DeliveryFailure>,
}

impl fmt::Display for BatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut section = Section::new(
            f,
            format_args!("[7] Batch delivery: {BATCH_SIZE} orders, one transaction each"),
        );
        section
            .line(format_args!(
                "  deliver_all -> {} delivered, {} failed",
                self.result.delivered.len(),
                self.result.failed.len()
            ))
            .field(
                "rows:",
                format_args!(
                    "{} orders DELIVERED, {} still PAID, {} shipments",
                    self.delivered_rows, self.paid_rows, self.shipments
                ),
            );
        for failure in &self.failure_rows {
            section.field("", format_args!("delivery_failure: {}", failure.reason));
        }
        section.finish()
    }
}

/// A serialization conflict retried.
#[derive(Debug)]
pub enum RetryReport {
    /// Not run on this backend, and why.
    Skipped(&'static str),
    /// Run.
    Ran {
        /// The two purchases.
        results: Vec<Step<i64>>,
        /// How many runs each call took, ascending.
        attempts: Vec<u32>,
        /// The sneaker's stock before.
        stock_before: i64,
        /// The sneaker afterwards.
        product: Product,
    },
}

impl fmt::Display for RetryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut section = Section::new(f, "[8] Serialization conflict: SERIALIZABLE + retry = 5");
        match self {
            RetryReport::Skipped(why) => section.line(format_args!("  skipped: {why}")),
            RetryReport::Ran {
                results,
                attempts,
                stock_before,
                product,
            } => section
                .steps(results)
                .line(format_args!(
                    "    runs per call: {attempts:?} (the aborted one was retried)"
                ))
                .field(
                    "rows:",
                    format_args!("{product} (was {stock_before}: no lost update)"),
                ),
        }
        .finish()
    }
}

/// Rollback-only.
#[derive(Debug)]
pub struct RollbackOnlyReport {
    /// The checkout whose coupon failure was swallowed.
    pub swallowed: Step<i64>,
    /// The template checkout that marked itself rollback-only.
    pub programmatic: Step<Option<i64>>,
    /// Zhou ba's keyboard orders.
    pub orders: Vec<Order>,
    /// The keyboard afterwards.
    pub product: Product,
    /// Whether the coupon is marked used (1) or not (0) afterwards.
    pub coupon_used: i64,
}

impl fmt::Display for RollbackOnlyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Section::new(
            f,
            "[9] Rollback-only: a failed participant dooms the transaction",
        )
        .line(&self.swallowed)
        .line(&self.programmatic)
        .rows("orders:", &self.orders)
        .field("", &self.product)
        .field("", format_args!("coupon used: {}", self.coupon_used))
        .finish()
    }
}

/// Every case's report.
#[derive(Debug)]
pub struct DemoReport {
    /// The backend it ran on.
    pub backend: Backend,
    /// Bank transfers.
    pub transfer: TransferReport,
    /// Order placement.
    pub orders: OrderReport,
    /// The audit log.
    pub audit: AuditReport,
    /// The NESTED gift.
    pub gift: GiftReport,
    /// The risk check, `no_rollback_for`.
    pub risk: RiskReport,
    /// The MQ message and the hooks.
    pub hooks: HooksReport,
    /// The batch delivery.
    pub batch: BatchReport,
    /// Serialization conflict.
    pub retry: RetryReport,
    /// Rollback-only.
    pub rollback_only: RollbackOnlyReport,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cases: [&dyn fmt::Display; 9] = [
            &self.transfer,
            &self.orders,
            &self.audit,
            &self.gift,
            &self.risk,
            &self.hooks,
            &self.batch,
            &self.retry,
            &self.rollback_only,
        ];
        for (i, case) in cases.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{case}")?;
        }
        Ok(())
    }
}
