//! How HighLevel hands webhooks to an app's URL, as unkindly as it may:
//! any non-2xx answer (or none) is retried with the same payload (so the
//! same `timestamp` and `webhookId`) up to 12 times with exponential backoff
//! and jitter; deliveries can come late, twice, and out of order.
//!
//! The courier does not know how the app is reached: `send` posts one
//! delivery and returns the HTTP status (0 for no answer). Time is scaled
//! ([`Schedule::scaled`]) so a test can run a two-day retry schedule in
//! milliseconds; what ages the event's timestamp is the body, which is
//! never re-signed or re-stamped.

use crate::Delivery;
use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// HighLevel's retry schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Retries after the first attempt (HighLevel: 12).
    pub retries: u32,
    /// The wait before the first retry; each later wait doubles.
    pub first_wait: Duration,
    /// ± this share of each wait, at random.
    pub jitter: f64,
}

impl Schedule {
    /// HighLevel's own (since 2026-04-30): 12 retries, doubling from a minute.
    pub fn highlevel() -> Self {
        Self {
            retries: 12,
            first_wait: Duration::from_secs(60),
            jitter: 0.2,
        }
    }

    /// The same schedule with every wait divided by `factor`.
    pub fn scaled(self, factor: u32) -> Self {
        Self {
            first_wait: self.first_wait / factor.max(1),
            ..self
        }
    }

    /// The wait before retry `n` (1-based), jitter applied.
    pub fn wait(&self, n: u32) -> Duration {
        let base = self.first_wait.as_secs_f64() * 2f64.powi(n.saturating_sub(1) as i32);
        let spread = base * self.jitter * rand::rng().random_range(-1.0..=1.0);
        Duration::from_secs_f64((base + spread).max(0.0))
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub webhook_id: String,
    /// Every status the app answered, in order (0: no answer).
    pub statuses: Vec<u16>,
}

impl Receipt {
    /// True when the app answered 2xx in the end.
    pub fn delivered(&self) -> bool {
        self.statuses.last().is_some_and(|s| (200..300).contains(s))
    }

    /// Attempts that HighLevel counts against the URL's success rate.
    pub fn failures(&self) -> usize {
        self.statuses
            .iter()
            .filter(|s| !(200..300).contains(*s))
            .count()
    }
}

/// Delivers with HighLevel's retries: the same delivery until a 2xx, at
/// most `schedule.retries` more times.
pub async fn deliver<F, Fut>(schedule: &Schedule, d: &Delivery, mut send: F) -> Receipt
where
    F: FnMut(Delivery) -> Fut,
    Fut: Future<Output = u16>,
{
    let mut statuses = Vec::new();
    for attempt in 0..=schedule.retries {
        if attempt > 0 {
            tokio::time::sleep(schedule.wait(attempt)).await;
        }
        let status = send(d.clone()).await;
        statuses.push(status);
        if (200..300).contains(&status) {
            break;
        }
    }
    Receipt {
        webhook_id: d.webhook_id.clone(),
        statuses,
    }
}

/// The deliveries in the order an unkind network hands them over: each
/// one possibly twice, the whole lot shuffled.
pub fn scrambled(deliveries: &[Delivery], duplicate_share: f64) -> Vec<Delivery> {
    let mut rng = rand::rng();
    let mut out = Vec::with_capacity(deliveries.len() * 2);
    for d in deliveries {
        out.push(d.clone());
        if rng.random_bool(duplicate_share.clamp(0.0, 1.0)) {
            out.push(d.clone());
        }
    }
    // Fisher–Yates.
    for i in (1..out.len()).rev() {
        let j = rng.random_range(0..=i);
        out.swap(i, j);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str) -> Delivery {
        Delivery {
            body: format!("{{\"webhookId\":\"{id}\"}}"),
            signature: String::new(),
            rsa_signature: String::new(),
            kind: "INSTALL".into(),
            webhook_id: id.into(),
        }
    }

    #[tokio::test]
    async fn a_failed_delivery_is_retried_with_the_same_bytes_until_a_2xx() {
        let d = delivery("w1");
        let mut answers = vec![503u16, 0, 500, 200].into_iter();
        let mut seen = Vec::new();
        let schedule = Schedule::highlevel().scaled(60_000);
        let r = deliver(&schedule, &d, |sent| {
            seen.push(sent.body.clone());
            let status = answers.next().unwrap_or(200);
            async move { status }
        })
        .await;
        assert_eq!(r.statuses, vec![503, 0, 500, 200]);
        assert!(r.delivered());
        assert_eq!(r.failures(), 3);
        assert!(seen.iter().all(|b| *b == d.body), "re-sent as first sent");
    }

    #[tokio::test]
    async fn retries_stop_after_the_schedule() {
        let schedule = Schedule {
            retries: 3,
            first_wait: Duration::from_millis(1),
            jitter: 0.0,
        };
        let r = deliver(&schedule, &delivery("w2"), |_| async { 503 }).await;
        assert_eq!(r.statuses.len(), 4);
        assert!(!r.delivered());
    }

    #[test]
    fn waits_double_and_stay_within_the_jitter() {
        let s = Schedule::highlevel();
        for n in 1..=12 {
            let base = 60.0 * 2f64.powi(n as i32 - 1);
            let w = s.wait(n).as_secs_f64();
            assert!(w >= base * 0.8 - 1e-6 && w <= base * 1.2 + 1e-6, "{n}: {w}");
        }
    }

    #[test]
    fn scrambling_keeps_every_delivery_and_may_repeat_them() {
        let ds: Vec<Delivery> = (0..50).map(|i| delivery(&format!("w{i}"))).collect();
        let out = scrambled(&ds, 1.0);
        assert_eq!(out.len(), 100);
        for d in &ds {
            assert_eq!(
                out.iter().filter(|o| o.webhook_id == d.webhook_id).count(),
                2
            );
        }
        assert_eq!(scrambled(&ds, 0.0).len(), 50);
    }
}
