//! The SMTP command parser on arbitrary lines: it must answer every line
//! with a command or a reply, and what it accepts must respect the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendengine::smtp::command::{Command, parse};

fuzz_target!(|line: &[u8]| {
    match parse(line) {
        Ok(Command::Mail { from, .. }) => assert!(from.len() <= 254),
        Ok(Command::Rcpt { to }) => assert!(!to.is_empty() && to.len() <= 254),
        Ok(_) => {}
        Err(reply) => assert!((400..600).contains(&reply.code)),
    }
});
