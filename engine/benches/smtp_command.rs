//! Command lines parsed per second by `engine::smtp::command::parse`, for the
//! lines an injecting application sends in every transaction (MAIL with
//! SIZE, RCPT, DATA) and the session-level ones. Run:
//! `cargo bench -p sendengine --bench smtp_command`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sendengine::smtp::command::parse;

/// One transaction of a pipelining client, as the server reads it.
const TRANSACTION: [&[u8]; 4] = [
    b"MAIL FROM:<newsletter@example.com> SIZE=10240 BODY=8BITMIME",
    b"RCPT TO:<first.last@example.net>",
    b"RCPT TO:<someone.else@example.org>",
    b"DATA",
];

fn commands(c: &mut Criterion) {
    let mut group = c.benchmark_group("smtp_command");
    group.throughput(Throughput::Elements(1));
    let single: [(&str, &[u8]); 6] = [
        ("ehlo", b"EHLO app-01.example.com"),
        ("mail_size", TRANSACTION[0]),
        ("rcpt", TRANSACTION[1]),
        ("data", b"DATA"),
        ("rset", b"RSET"),
        ("bad_verb", b"FROB something"),
    ];
    for (name, line) in single {
        group.bench_function(name, |b| b.iter(|| parse(black_box(line))));
    }
    group.finish();

    let mut group = c.benchmark_group("smtp_transaction");
    group.throughput(Throughput::Elements(TRANSACTION.len() as u64));
    group.bench_function("mail_2rcpt_data", |b| {
        b.iter(|| {
            for line in TRANSACTION {
                let _ = black_box(parse(black_box(line)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, commands);
criterion_main!(benches);
