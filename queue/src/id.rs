//! Message ids: 64-bit, time-based and strictly increasing, so an id is never
//! reused, not even after the spool empties and the process restarts.
//!
//! Layout: `(unix_ms << 20) | counter`. The writer thread is the only place ids
//! are made; it also stores a high-water mark in the spool so a clock that goes
//! backwards cannot hand out an id twice.

/// Identifies one accepted message for its whole life in the spool.
pub type MessageId = u64;

/// Bits of an id below the millisecond timestamp: about a million ids per
/// millisecond before the counter carries into the time part (still unique).
const COUNTER_BITS: u32 = 20;

/// The largest timestamp that still fits once shifted.
const MAX_TIMESTAMP_MS: u64 = u64::MAX >> COUNTER_BITS;

/// The smallest id a message received at `unix_ms` can have: ids below it
/// are of messages received earlier (for range deletes by age).
pub fn first_id_at(unix_ms: u64) -> MessageId {
    unix_ms.min(MAX_TIMESTAMP_MS) << COUNTER_BITS
}

/// The id as 16 lowercase hex digits: fixed width, so text order is id order.
pub fn format_id(id: MessageId) -> String {
    format!("{id:016x}")
}

/// Parses what [`format_id`] produced; anything else (wrong length, upper case,
/// signs, spaces) is `None`.
pub fn parse_id(text: &str) -> Option<MessageId> {
    let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if text.len() != 16 || !text.bytes().all(is_lower_hex) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// When the message was accepted (unix milliseconds), read back from its id.
pub fn id_timestamp_ms(id: MessageId) -> u64 {
    id >> COUNTER_BITS
}

/// Hands out ids; owned by the writer thread, so it needs no locking.
#[derive(Debug)]
pub(crate) struct IdGenerator {
    next: MessageId,
}

impl IdGenerator {
    /// Every id handed out will be at least `floor`.
    pub(crate) fn new(floor: MessageId) -> Self {
        IdGenerator { next: floor }
    }

    pub(crate) fn next_id(&mut self, now_ms: u64) -> MessageId {
        let from_clock = now_ms.min(MAX_TIMESTAMP_MS) << COUNTER_BITS;
        let id = self.next.max(from_clock);
        self.next = id.saturating_add(1);
        id
    }

    /// The smallest id not yet handed out: persisted so a restart continues above it.
    pub(crate) fn high_water(&self) -> MessageId {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_parse_roundtrip() {
        for id in [0, 1, 0xdead_beef, u64::MAX, 1_700_000_000_000 << 20 | 5] {
            let text = format_id(id);
            assert_eq!(text.len(), 16);
            assert_eq!(parse_id(&text), Some(id));
        }
        assert_eq!(format_id(255), "00000000000000ff");
    }

    #[test]
    fn parse_rejects_other_text() {
        for text in [
            "",
            "ff",
            "00000000000000FF",
            "+0000000000000ff",
            " 000000000000000",
            "00000000000000ff0",
            "000000000000000g",
        ] {
            assert_eq!(parse_id(text), None, "{text:?}");
        }
    }

    #[test]
    fn ids_increase_even_when_the_clock_goes_back() {
        let mut ids = IdGenerator::new(0);
        let first = ids.next_id(2_000);
        let second = ids.next_id(2_000);
        let after_clock_jump_back = ids.next_id(1_000);
        assert!(first < second && second < after_clock_jump_back);
        assert_eq!(id_timestamp_ms(first), 2_000);
        assert_eq!(ids.high_water(), after_clock_jump_back + 1);
    }

    #[test]
    fn floor_from_a_previous_run_is_respected() {
        let floor = (5_000 << COUNTER_BITS) + 7;
        let mut ids = IdGenerator::new(floor);
        assert_eq!(ids.next_id(4_000), floor);
        assert!(ids.next_id(6_000) >= 6_000 << COUNTER_BITS);
    }
}
