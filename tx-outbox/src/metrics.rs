//! Relay metrics through the `metrics` facade (feature `metrics`):
//! `tx_outbox_delivered_total`, `tx_outbox_send_failures_total`,
//! `tx_outbox_parked_total` (counters) and `tx_outbox_lag_seconds` (histogram: publish to
//! broker acknowledgement), each labelled with the outbox `table`.

use std::time::SystemTime;

use crate::store::PendingRow;

pub(crate) fn delivered(table: &str, rows: &[PendingRow], ids: &[i64]) {
    let label = table.to_owned();
    metrics::counter!("tx_outbox_delivered_total", "table" => label.clone())
        .increment(ids.len() as u64);
    let lag = metrics::histogram!("tx_outbox_lag_seconds", "table" => label);
    let now = SystemTime::now();
    for row in rows.iter().filter(|r| ids.contains(&r.id)) {
        let created = crate::message::from_millis(row.created_ms);
        lag.record(
            now.duration_since(created)
                .unwrap_or_default()
                .as_secs_f64(),
        );
    }
}

pub(crate) fn failed(table: &str, parked: bool) {
    metrics::counter!("tx_outbox_send_failures_total", "table" => table.to_owned()).increment(1);
    if parked {
        metrics::counter!("tx_outbox_parked_total", "table" => table.to_owned()).increment(1);
    }
}
