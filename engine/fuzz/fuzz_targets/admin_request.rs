//! The admin protocol decoder on arbitrary bytes: framing (`read_frame`)
//! and request parsing must never panic, and every outcome must make a
//! response line that is JSON ending in one newline.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use sendengine::admin::protocol::{Args, parse_request, read_frame, response_line};

fuzz_target!(|data: &[u8]| {
    // An in-memory reader never waits, so one poll finishes each frame.
    let mut reader: &[u8] = data;
    let mut buf = Vec::new();
    let mut context = Context::from_waker(Waker::noop());
    loop {
        let poll = pin!(read_frame(&mut reader, &mut buf)).poll(&mut context);
        let Poll::Ready(frame) = poll else {
            panic!("read_frame waited on an in-memory reader");
        };
        match frame {
            Ok(Some(_)) => check_request(&buf),
            Ok(None) | Err(_) => break,
        }
    }
    check_request(data);
});

fn check_request(line: &[u8]) {
    let result = parse_request(line).map(|request| {
        let args = Args(&request.args);
        let _ = args.opt_str("name");
        let _ = args.opt_u64("limit");
        serde_json::Value::String(request.cmd)
    });
    let response = response_line(&result);
    assert_eq!(response.last(), Some(&b'\n'));
    assert!(!response[..response.len() - 1].contains(&b'\n'));
}
