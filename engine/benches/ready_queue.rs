//! Operations per second on a route's `ReadyQueue` (engine::deliver::ready):
//! the scheduler's push / the delivery workers' pop, with marketing mail
//! spread over campaigns and some transactional mail in the priority lane,
//! and admission's reserve-then-push path. Run:
//! `cargo bench -p sendengine --bench ready_queue`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sendengine::deliver::{Job, ReadyQueue};
use sendengine_queue::{MessageMeta, StoredMessage};

/// Jobs moved per measured batch, and the queue's capacity.
const BATCH: usize = 1_000;

fn job(id: u64, channel: &str, campaign: &str) -> Job {
    Job {
        message: Arc::new(StoredMessage {
            id,
            mail_from: "news@example.com".into(),
            recipients: vec![format!("r{id}@example.net")],
            meta: MessageMeta {
                channel: channel.into(),
                campaign: campaign.into(),
                ..MessageMeta::default()
            },
            body: Arc::new(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
        }),
        header_message_id: format!("<{id}@example.com>"),
        rcpts: vec![(0, 0)],
        tried: Vec::new(),
        hold: Arc::default(),
    }
}

/// A mix: one job in ten transactional, the rest over `campaigns` campaigns.
fn jobs(campaigns: usize) -> Vec<Job> {
    (0..BATCH as u64)
        .map(|id| {
            if id % 10 == 0 {
                job(id, "transactional", "")
            } else {
                let campaign = format!("c{}", id as usize % campaigns);
                job(id, "marketing", &campaign)
            }
        })
        .collect()
}

fn push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("ready_queue_push_pop");
    group.throughput(Throughput::Elements(BATCH as u64));
    for campaigns in [1, 10, 100] {
        let template = jobs(campaigns);
        group.bench_with_input(
            BenchmarkId::new("campaigns", campaigns),
            &template,
            |b, template| {
                let queue = ReadyQueue::new(BATCH);
                b.iter_batched(
                    || template.clone(),
                    |batch| {
                        for job in batch {
                            // The batch fits the capacity: never refused.
                            let _ = queue.try_push(job);
                        }
                        while let Some(job) = queue.try_pop() {
                            black_box(job);
                        }
                    },
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

fn reserve_push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("ready_queue_reserved");
    group.throughput(Throughput::Elements(BATCH as u64));
    let template = jobs(10);
    group.bench_function("reserve_push_reserved_pop", |b| {
        let queue = ReadyQueue::new(BATCH);
        b.iter_batched(
            || template.clone(),
            |batch| {
                for job in batch {
                    if queue.try_reserve(job.is_priority()) {
                        let _ = queue.push_reserved(job);
                    }
                }
                while let Some(job) = queue.try_pop() {
                    black_box(job);
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, push_pop, reserve_push_pop);
criterion_main!(benches);
