//! The rows a worker holds under its lease: claiming due sagas, writing each change fenced by
//! the lease token, renewing the lease before a long step, handing a saga back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tx_sqlx::TxError;

use crate::backend::SagaBackend;
use crate::backend::private::{Cell, Claim, Col, Value};
use crate::definition::ErasedSaga;
use crate::id::SagaId;
use crate::registry::Registry;
use crate::sql::Sql;

const CLAIM_COLS: &[Col] = &[
    Col::Text,
    Col::Text,
    Col::Text,
    Col::I64,
    Col::I64,
    Col::Text,
    Col::I64,
    Col::Text,
];

/// What the tasks of one running worker share.
pub(super) struct Shared<DB: SagaBackend> {
    pub(super) registry: Arc<Registry<DB>>,
    pub(super) sql: Arc<Sql>,
    /// This worker's part of every lease token.
    pub(super) id: String,
    pub(super) claims: AtomicU64,
    pub(super) stopping: AtomicBool,
}

/// Where a saga stands, as its row records it.
#[derive(Clone)]
pub(super) struct Position {
    pub(super) backward: bool,
    /// Forward: the number of completed steps (the next step to run). Backward: the number of
    /// steps still to compensate (the next compensation is of step `step - 1`).
    pub(super) step: i64,
    pub(super) state: String,
    /// Failed attempts recorded for the current step and direction.
    pub(super) attempt: i64,
    pub(super) last_error: Option<String>,
}

/// A claimed saga, as this worker knows it.
pub(super) struct Record {
    pub(super) id: SagaId,
    pub(super) saga: Arc<dyn ErasedSaga>,
    pub(super) at: Position,
    pub(super) token: Arc<str>,
    /// Our lease surely holds until then (measured from before the statement that set it).
    pub(super) lease_deadline: Instant,
}

/// A change of a claimed saga, written fenced by its lease token.
pub(super) struct Transition {
    pub(super) status: &'static str,
    /// Where the saga moves.
    pub(super) to: Position,
    /// Keep the lease for this long (the worker goes on with the saga), or hand the saga back.
    pub(super) hold: Option<Duration>,
    /// When the saga is due again (backoff).
    pub(super) delay: Duration,
}

impl Transition {
    /// The saga stays at its step, in its direction, with `attempts` failed attempts and
    /// `error` recorded, handed back until `delay` has passed.
    pub(super) fn stay(
        rec: &Record,
        status: &'static str,
        attempts: i64,
        error: String,
        delay: Duration,
    ) -> Transition {
        Transition {
            status,
            to: Position {
                attempt: attempts,
                last_error: Some(error),
                ..rec.at.clone()
            },
            hold: None,
            delay,
        }
    }
}

/// Whether a write fenced by `rec`'s lease token took; when not, logs `lost` (another worker
/// holds the saga now) or `failed` (the statement failed).
pub(super) fn fenced(
    rec: &Record,
    written: Result<bool, TxError>,
    lost: &str,
    failed: &str,
) -> bool {
    match written {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(target: "tx_saga", saga_id = %rec.id, "{lost}");
            false
        }
        Err(e) => {
            tracing::warn!(target: "tx_saga", saga_id = %rec.id, error = %e, "{failed}");
            false
        }
    }
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl<DB: SagaBackend> Shared<DB> {
    pub(super) fn db(&self) -> &tx_sqlx::TxPool<DB> {
        &self.registry.db
    }

    pub(super) fn lease(&self) -> Duration {
        self.registry.lease
    }

    /// Time for the bookkeeping and commit of a step beyond its own timeout.
    pub(super) fn slack(&self) -> Duration {
        (self.lease() / 2).min(Duration::from_secs(5))
    }

    /// The lease a worker holds while step `index` runs: the engine's lease, or longer for a
    /// step whose timeout (plus bookkeeping) would outlast it.
    pub(super) fn hold_for(&self, saga: &dyn ErasedSaga, index: usize) -> Duration {
        let budget = saga.options(index).get_timeout() + self.slack();
        self.lease().max(budget + self.slack())
    }

    /// The lease to hold after moving to `step` (forward: the next step to run; backward: the
    /// number of steps left to compensate).
    pub(super) fn hold_at(&self, saga: &dyn ErasedSaga, backward: bool, step: i64) -> Duration {
        let index = if backward { step - 1 } else { step };
        if index >= 0 && (index as usize) < saga.len() {
            self.hold_for(saga, index as usize)
        } else {
            self.lease()
        }
    }

    /// Claims up to `limit` due sagas under a fresh lease token.
    pub(super) async fn claim(&self, limit: usize) -> Result<Vec<Record>, TxError> {
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        let token: Arc<str> = Arc::from(format!("{}-{n}", self.id));
        let lease_ms = millis(self.lease());
        let names: Vec<Value> = self
            .registry
            .sagas
            .keys()
            .map(|k| Value::Text(k.to_string()))
            .collect();
        let before = Instant::now();
        let rows = match self.sql.claim_style {
            Claim::UpdateReturning => {
                let mut args = vec![Value::Text(token.to_string()), Value::I64(lease_ms)];
                args.extend(names);
                args.push(Value::I64(limit as i64));
                DB::saga_fetch(self.db(), self.sql.claim.clone(), args, CLAIM_COLS).await?
            }
            Claim::SelectThenUpdate => {
                let db = self.db().clone();
                let sql = self.sql.clone();
                let token = token.clone();
                DB::saga_template(&db)
                    .name("tx_saga claim")
                    .execute(move |_| {
                        let (db, sql, token) = (db.clone(), sql.clone(), token.clone());
                        let mut args: Vec<Value> = names
                            .iter()
                            .map(|v| match v {
                                Value::Text(s) => Value::Text(s.clone()),
                                _ => Value::NullText,
                            })
                            .collect();
                        args.push(Value::I64(limit as i64));
                        async move {
                            let mut rows =
                                DB::saga_fetch(&db, sql.claim.clone(), args, CLAIM_COLS).await?;
                            if rows.is_empty() {
                                return Ok::<_, TxError>(rows);
                            }
                            let mut upd =
                                vec![Value::Text(token.to_string()), Value::I64(lease_ms)];
                            for row in &mut rows {
                                let id = row[0].text().unwrap_or_default();
                                upd.push(Value::Text(id.clone()));
                                row[0] = Cell::Text(Some(id));
                            }
                            DB::saga_execute(&db, sql.claim_update(rows.len()), upd).await?;
                            Ok(rows)
                        }
                    })
                    .await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for mut row in rows {
            let id_text = row[0].text().unwrap_or_default();
            let name = row[1].text().unwrap_or_default();
            let Ok(id) = id_text.parse::<SagaId>() else {
                tracing::error!(target: "tx_saga", id = %id_text, "skipping a saga row with a malformed id");
                continue;
            };
            let Some(saga) = self.registry.saga(&name).cloned() else {
                continue;
            };
            out.push(Record {
                id,
                saga,
                at: Position {
                    backward: row[3].i64() == 1,
                    step: row[4].i64(),
                    state: row[5].text().unwrap_or_default(),
                    attempt: row[6].i64(),
                    last_error: row[7].text(),
                },
                token: token.clone(),
                lease_deadline: before + self.lease(),
            });
        }
        Ok(out)
    }

    /// Writes `t` for `rec`, fenced by its lease token; false when the lease was lost.
    pub(super) async fn write(&self, rec: &Record, t: &Transition) -> Result<bool, TxError> {
        let to = &t.to;
        let args = vec![
            Value::Text(t.status.to_owned()),
            Value::I64(i64::from(to.backward)),
            Value::I64(to.step),
            Value::Text(to.state.clone()),
            Value::I64(to.attempt),
            to.last_error.clone().map_or(Value::NullText, Value::Text),
            if t.hold.is_some() {
                Value::Text(rec.token.to_string())
            } else {
                Value::NullText
            },
            t.hold.map_or(Value::NullI64, |h| Value::I64(millis(h))),
            Value::I64(millis(t.delay)),
            Value::Text(rec.id.to_string()),
            Value::Text(rec.token.to_string()),
        ];
        Ok(DB::saga_execute(self.db(), self.sql.write.clone(), args).await? == 1)
    }

    /// Extends the lease to `hold` before a step that might outlast it; false when it is
    /// lost.
    pub(super) async fn renew(&self, rec: &mut Record, hold: Duration) -> bool {
        let before = Instant::now();
        let args = vec![
            Value::I64(millis(hold)),
            Value::Text(rec.id.to_string()),
            Value::Text(rec.token.to_string()),
        ];
        let renewed = DB::saga_execute(self.db(), self.sql.renew.clone(), args).await;
        let lost = "lease lost before the next step";
        if !fenced(
            rec,
            renewed.map(|n| n == 1),
            lost,
            "renewing the lease failed",
        ) {
            return false;
        }
        rec.lease_deadline = before + hold;
        true
    }

    /// Hands a saga back (due at once) when the worker stops.
    pub(super) async fn release(&self, rec: &Record) {
        let args = vec![
            Value::Text(rec.id.to_string()),
            Value::Text(rec.token.to_string()),
        ];
        if let Err(e) = DB::saga_execute(self.db(), self.sql.release.clone(), args).await {
            tracing::warn!(target: "tx_saga", saga_id = %rec.id, error = %e, "releasing the saga failed; it is resumed once its lease expires");
        }
    }
}
