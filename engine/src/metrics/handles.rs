//! Counter and histogram handles of the per-message metrics, looked up once
//! per label set.
//!
//! A `metrics` macro call builds its key (a vector of labels, the route name
//! copied into it) and finds it in the recorder's registry, every time: the
//! few calls per message were 2% of the daemon's CPU at full load. A
//! handle stays the same for the same labels, so it is kept here under a
//! flat text key, written into a reused buffer. The map is bounded: past
//! `MAX_HANDLES` label sets (many tenants with `tenant_labels`), calls take
//! the macro's own path again, which counts just the same.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{LazyLock, PoisonError, RwLock};

use metrics::{Counter, Histogram, Label};

/// Label sets kept; each costs a key of a few dozen bytes and a handle.
const MAX_HANDLES: usize = 10_000;

static COUNTERS: LazyLock<RwLock<HashMap<Box<str>, Counter>>> = LazyLock::new(Default::default);
static HISTOGRAMS: LazyLock<RwLock<HashMap<Box<str>, Histogram>>> = LazyLock::new(Default::default);

thread_local! {
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The counter `name` with `labels`, from the map or registered now.
pub(super) fn counter(name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
    cached(&COUNTERS, name, labels, |labels| {
        metrics::counter!(name, labels)
    })
}

/// The histogram `name` with `labels`, from the map or registered now.
pub(super) fn histogram(name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
    cached(&HISTOGRAMS, name, labels, |labels| {
        metrics::histogram!(name, labels)
    })
}

fn cached<H: Clone>(
    map: &RwLock<HashMap<Box<str>, H>>,
    name: &'static str,
    labels: &[(&'static str, &str)],
    register: impl FnOnce(Vec<Label>) -> H,
) -> H {
    KEY.with_borrow_mut(|key| {
        key.clear();
        key.push_str(name);
        for (label, value) in labels {
            // Each value's length goes first, so that no value can pass
            // for another label and distinct label sets get distinct keys.
            let _ = write!(key, " {label}={}:{value}", value.len());
        }
        if let Some(handle) = map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key.as_str())
        {
            return handle.clone();
        }
        let labels = labels
            .iter()
            .map(|(label, value)| Label::new(*label, value.to_string()))
            .collect();
        let handle = register(labels);
        let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() < MAX_HANDLES {
            map.insert(key.as_str().into(), handle.clone());
        }
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_set_is_registered_once_and_counts_through_its_handle() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let labels = [("route", "relay-1"), ("channel", "marketing")];
            counter("test_handles_total", &labels).increment(2);
            counter("test_handles_total", &labels).increment(3);
            counter(
                "test_handles_total",
                &[("route", "relay-2"), ("channel", "marketing")],
            )
            .increment(1);
        });
        let text = handle.render();
        assert!(
            text.contains("test_handles_total{route=\"relay-1\",channel=\"marketing\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("test_handles_total{route=\"relay-2\",channel=\"marketing\"} 1"),
            "{text}"
        );
    }
}
