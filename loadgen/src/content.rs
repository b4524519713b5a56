//! The message content loadgen sends, which carries everything a receiver needs.
//!
//! Content is `lg <run> <sender> <seq> <sent_ns> <padding>`:
//! - `run`: 8 hex digits drawn per run, so messages left over from another run (or sent by
//!   other clients into the same room) are told apart and ignored;
//! - `sender`: the sender's connection id, so any receiver, in any worker process, can keep
//!   one expected-sequence counter per sender;
//! - `seq`: 0, 1, 2, ... per sender, for loss, reordering and duplicate accounting;
//! - `sent_ns`: `CLOCK_MONOTONIC` nanoseconds at the send (or due) time; that clock is
//!   system-wide, so the receiver's process can subtract it from its own reading.
//!
//! Padding is `.` up to the requested size: plain ASCII that no JSON escaping changes and
//! no moderation word list matches, so the content arrives byte-for-byte as sent.

/// The fields carried in one message's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Run id: filters out messages that are not from this run.
    pub run: u32,
    /// Connection id of the sender.
    pub sender: u32,
    /// Per-sender sequence number, from 0.
    pub seq: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at the send (or due) time.
    pub sent_ns: u64,
}

/// Padding of `--text-padding`: words of plain ASCII (nothing JSON escapes, no word of
/// chatd's default block list) that compress roughly like chat text, unlike dots.
const WORDS: &str = "the team ships the release on friday after review of the notes and \
     the tests, then everyone takes a long weekend away from the keyboard. ";

/// Writes `stamp` as content of exactly `max(size, header length)` bytes into `out`,
/// padded with dots, or with words when `words` is set.
pub fn encode(stamp: &Stamp, size: usize, words: bool, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "lg {:08x} {} {} {} ",
        stamp.run, stamp.sender, stamp.seq, stamp.sent_ns
    );
    if words {
        let need = size.saturating_sub(out.len());
        out.extend(WORDS.chars().cycle().take(need));
        return;
    }
    while out.len() < size {
        out.push('.');
    }
}

/// Parses content written by `encode`; `None` for anything else (other clients' chat,
/// content a server rewrote).
pub fn decode(content: &str) -> Option<Stamp> {
    let rest = content.strip_prefix("lg ")?;
    let mut parts = rest.splitn(5, ' ');
    let run = u32::from_str_radix(parts.next()?, 16).ok()?;
    let sender = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let sent_ns = parts.next()?.parse().ok()?;
    // The fifth part (padding) may be absent when the header already fills `size`.
    Some(Stamp {
        run,
        sender,
        seq,
        sent_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longest header `encode` can write (`lg ` + 8 + 10 + 20 + 20 digits + 4 spaces).
    const MAX_HEADER: usize = 3 + 8 + 1 + 10 + 1 + 20 + 1 + 20 + 1;

    #[test]
    fn encode_pads_to_size_and_round_trips() {
        let stamp = Stamp {
            run: 0xdead_beef,
            sender: 17,
            seq: 42,
            sent_ns: 123_456_789_012,
        };
        let mut s = String::new();
        encode(&stamp, 100, false, &mut s);
        assert_eq!(s.len(), 100);
        assert!(s.starts_with("lg deadbeef 17 42 123456789012 ."), "{s}");
        assert!(s.ends_with("...."));
        assert_eq!(decode(&s), Some(stamp));
        encode(&stamp, 300, true, &mut s);
        assert_eq!(s.len(), 300);
        assert!(
            s.starts_with("lg deadbeef 17 42 123456789012 the team ships"),
            "{s}"
        );
        assert_eq!(decode(&s), Some(stamp));
    }

    #[test]
    fn small_size_keeps_the_whole_header() {
        let stamp = Stamp {
            run: 1,
            sender: u32::MAX,
            seq: u64::MAX,
            sent_ns: u64::MAX,
        };
        let mut s = String::new();
        encode(&stamp, 10, true, &mut s);
        assert_eq!(s.len(), MAX_HEADER);
        assert_eq!(decode(&s), Some(stamp));
    }

    #[test]
    fn foreign_content_is_rejected() {
        assert_eq!(decode("Hello everyone!"), None);
        assert_eq!(decode("lg zz 1 2 3 "), None);
        assert_eq!(decode("lg 00000001 1 2"), None);
        assert_eq!(decode("lg 00000001 x 2 3 "), None);
        // A server that masked part of the content with `*` breaks the numbers.
        assert_eq!(decode("lg 00000001 1 ** 3 ..."), None);
    }
}
