//! Measures durable insert throughput with group commit: N threads each insert
//! 10 KB messages and wait for the commit, like SMTP sessions waiting to send 250.
//!
//! Usage: cargo run --release -p sendengine-queue --example group_commit_throughput \
//!        [-- THREADS [INSERTS_PER_THREAD [DIR]]]   (defaults: 20, 500, a temp dir)

use std::thread;
use std::time::Instant;

use sendengine_queue::{MessageMeta, NewMessage, Spool, SpoolConfig};

const BODY_BYTES: usize = 10 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads: usize = args.first().map_or(Ok(20), |a| a.parse())?;
    let per_thread: usize = args.get(1).map_or(Ok(500), |a| a.parse())?;
    let temp = tempfile::tempdir()?;
    let dir = args
        .get(2)
        .map_or_else(|| temp.path().to_path_buf(), Into::into);

    let spool = Spool::open(SpoolConfig::new(&dir))?;
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|thread_no| {
            let spool = spool.clone();
            thread::spawn(move || {
                for i in 0..per_thread {
                    spool.insert_blocking(sample(thread_no, i), false)?;
                }
                Ok::<_, sendengine_queue::SpoolError>(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| "an insert thread panicked")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = spool.stats()?;
    let inserts = threads * per_thread;
    println!(
        "{inserts} durable inserts of {BODY_BYTES} B from {threads} threads in {elapsed:.2} s: \
         {:.0} inserts/s, {} commits ({:.1} inserts per commit), file {} MiB, dir {}",
        inserts as f64 / elapsed,
        stats.commits,
        inserts as f64 / stats.commits.max(1) as f64,
        stats.file_bytes / (1024 * 1024),
        dir.display()
    );
    spool.shutdown();
    Ok(())
}

fn sample(thread_no: usize, i: usize) -> NewMessage {
    let mut body = format!("Subject: load {thread_no}-{i}\r\n\r\n").into_bytes();
    body.resize(BODY_BYTES, b'x');
    NewMessage {
        mail_from: "bench@example.com".into(),
        recipients: vec![format!("rcpt{i}@example.net")],
        body: body.into(),
        meta: MessageMeta {
            tenant: "bench".into(),
            ..MessageMeta::default()
        },
        quotas: Vec::new(),
        tracking: None,
        idempotency: None,
    }
}
