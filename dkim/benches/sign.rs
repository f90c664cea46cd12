//! Signs per second for 10 KB and 100 KB messages, RSA-2048 and Ed25519,
//! with a cached signer (the daemon's case) and with a signer built per
//! message (what the cache saves). Run: `cargo bench -p sendengine-dkim`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sendengine_dkim::{DkimKey, KeyAlgorithm, Signer};

const DOMAIN: &str = "example.com";
const SELECTOR: &str = "s202611";

/// A realistic newsletter: the usual signed headers and a text body of
/// 76-character lines, padded to `size` bytes.
fn message_of_size(size: usize) -> Vec<u8> {
    let mut message = b"From: News <news@example.com>\r\n\
        To: reader@example.net\r\n\
        Subject: The weekly letter\r\n\
        Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n\
        Message-ID: <bench@example.com>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        List-Unsubscribe: <https://example.com/u/1>\r\n\
        List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
        .to_vec();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te\r\n";
    while message.len() + line.len() <= size {
        message.extend_from_slice(line);
    }
    message
}

fn sign(c: &mut Criterion) {
    let keys = [
        ("rsa2048", DkimKey::generate(KeyAlgorithm::Rsa).unwrap()),
        ("ed25519", DkimKey::generate(KeyAlgorithm::Ed25519).unwrap()),
    ];
    for (size_label, size) in [("10KB", 10 * 1024), ("100KB", 100 * 1024)] {
        let message = message_of_size(size);
        let mut group = c.benchmark_group(format!("sign_{size_label}"));
        group.throughput(Throughput::Elements(1));
        for (key_label, key) in &keys {
            let signer = Signer::new(key, DOMAIN, SELECTOR).unwrap();
            group.bench_with_input(
                BenchmarkId::new(*key_label, "cached"),
                &message,
                |b, message| b.iter(|| signer.sign(black_box(message)).unwrap()),
            );
            group.bench_with_input(
                BenchmarkId::new(*key_label, "uncached"),
                &message,
                |b, message| {
                    b.iter(|| {
                        let signer = Signer::new(black_box(key), DOMAIN, SELECTOR).unwrap();
                        signer.sign(black_box(message)).unwrap()
                    })
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, sign);
criterion_main!(benches);
