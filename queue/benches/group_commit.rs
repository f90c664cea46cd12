//! Group commit: 10 KB messages inserted through the real `Spool` with
//! fdatasync on (a temporary folder in /var/tmp, on disk), in
//! batches of 1, 8, 64 and 256 inserts submitted together; the writer
//! commits each batch once. Elements/s is messages per second; the time per
//! iteration is the latency of a batch. Run:
//! `cargo bench -p sendengine-queue --bench group_commit`.

use std::sync::mpsc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sendengine_queue::{MessageMeta, NewMessage, Spool, SpoolConfig};

/// Body bytes per message.
const BODY_BYTES: usize = 10 * 1024;
const BATCH_SIZES: [usize; 4] = [1, 8, 64, 256];

fn message(body: &[u8]) -> NewMessage {
    NewMessage {
        mail_from: "news@example.com".into(),
        recipients: vec!["reader@example.net".into()],
        body: body.to_vec().into(),
        meta: MessageMeta {
            channel: "marketing".into(),
            route: "relay".into(),
            ..MessageMeta::default()
        },
        quotas: Vec::new(),
        tracking: None,
        idempotency: None,
    }
}

/// Submits `batch` inserts at once and waits for all their commits.
fn insert_batch(spool: &Spool, body: &[u8], batch: usize) {
    let (done_tx, done_rx) = mpsc::channel();
    for _ in 0..batch {
        let done_tx = done_tx.clone();
        spool.insert(
            message(body),
            false,
            Box::new(move |result| {
                let _ = done_tx.send(result.is_ok());
            }),
        );
    }
    drop(done_tx);
    let committed = done_rx.iter().filter(|ok| *ok).count();
    assert_eq!(committed, batch, "every insert commits");
}

fn group_commit(c: &mut Criterion) {
    // /var/tmp is on disk on Debian (/tmp may be tmpfs): fsync must be real.
    let base = if std::path::Path::new("/var/tmp").is_dir() {
        "/var/tmp"
    } else {
        "."
    };
    let dir = tempfile::tempdir_in(base).expect("temporary folder");
    let body: Vec<u8> = (0..BODY_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
    let mut group = c.benchmark_group("group_commit_10KB_fsync");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for batch in BATCH_SIZES {
        let mut config = SpoolConfig::new(dir.path().join(format!("batch-{batch}")));
        config.max_batch = batch;
        let spool = Spool::open(config).expect("open the spool");
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| insert_batch(&spool, &body, batch))
        });
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
