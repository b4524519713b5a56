//! Content moderation and its audit trail (the original `ModerationService`).
//!
//! PROTOCOL.md section 5: with moderation on, block-listed words are masked with `*` in the stored
//! and broadcast copy (`filterMessage`), content the rules refuse outright (`isMessageAllowed`
//! false) is answered with `message_blocked`, and every masked or blocked message writes an audit
//! record (`auditMessage`).
//!
//! Matching is done on a folded copy of the text ([`normalize`]: compatibility decomposition,
//! invisible characters and accents dropped, lowercased, non-ASCII look-alikes folded onto what
//! they imitate), so "ｄａｒｎ", "d\u{200B}arn", "dаrn" (Cyrillic а), "d\u{AD}arn" and "dárn" all
//! match a listed "darn". List entries are folded the same way, so non-ASCII entries such as
//! "scheiße" or "мат" work. Matching is per word as Unicode word segmentation (UAX #29) sees the
//! folded text, so a listed word is masked wherever it stands alone ("Shit!", "SHIT,", "(shit)")
//! but never inside a longer word (a listed "ass" leaves "class" and "assessment" alone).
//!
//! Masking edits the *original* text: each match is mapped back to the original characters it
//! came from, and each of those is replaced by one `*`, except characters with no visible form
//! of their own (an invisible character or an accent inside the word), which are removed. Every
//! original character outside a match is kept exactly as sent.
//!
//! Two rules refuse a message instead of masking it:
//! 1. every word in it is a blocked word (masking would leave nothing but asterisks), and
//! 2. a configured regular expression (`MODERATION_PATTERNS`, compiled case-insensitive) matches
//!    the folded text (so a pattern is written in folded form: lowercase, no accents).
//!
//! The hot path is a clean message with moderation on. Pure ASCII content (most messages) is
//! already in folded form up to case, so it is scanned as it is, once, with no allocation
//! ([`Moderator::filter_message`] returns [`Cow::Borrowed`]); other content costs one folded copy.
//!
//! Everything here is pure except [`Moderator::read_list_file`] (startup configuration) and the
//! `tracing` event that [`MemoryAudit`] emits per record.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use regex::{RegexBuilder, RegexSet, RegexSetBuilder};
use unicode_segmentation::UnicodeSegmentation;

pub mod normalize;

use normalize::lower_char as fold_char;

/// Built-in block list used when `MODERATION_BLOCKLIST` is not set.
///
/// Deliberately short: common English profanities, lowercase, one word each. It contains no slurs
/// (a list of slurs does not belong in the source tree); deployments that need more supply their
/// own list, which replaces this one. Inflected forms are listed separately because matching is by
/// whole word.
const DEFAULT_WORDS: &[&str] = &[
    "arse",
    "arsehole",
    "asshole",
    "bastard",
    "bitch",
    "bollocks",
    "crap",
    "damn",
    "dick",
    "fuck",
    "fucker",
    "fucking",
    "motherfucker",
    "piss",
    "prick",
    "shit",
    "shitty",
    "wanker",
];

/// Size of the on-stack buffer a candidate word is lowercased into. Listed words longer than this
/// (in bytes, after lowercasing) are compared through a heap buffer instead; none of the built-in
/// ones come close.
const FOLD_BUF: usize = 64;

/// Why moderation failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    /// A `MODERATION_PATTERNS` entry is not a valid regular expression.
    #[error("invalid moderation pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern as configured.
        pattern: String,
        /// The regex compiler's explanation.
        reason: String,
    },
    /// The block-list file could not be read.
    #[error("cannot read moderation file {path}: {reason}")]
    File {
        /// The path as given.
        path: String,
        /// The operating system's explanation.
        reason: String,
    },
}

/// What moderation decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change: store and broadcast as sent.
    Clean,
    /// Store and broadcast this masked text instead of the original.
    Masked(String),
    /// Refuse the message (`message_blocked`); nothing is stored or broadcast.
    Blocked(BlockReason),
}

/// Which rule refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockReason {
    /// Every word of the message is on the block list.
    OnlyBlockedWords,
    /// A configured pattern matched; holds the pattern's source text (for the audit record).
    Pattern(String),
}

impl fmt::Display for BlockReason {
    /// A short text fit to show the sender. It does not quote the pattern: the configured
    /// patterns are the operator's business, and quoting them would show how to evade them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockReason::OnlyBlockedWords => f.write_str("message consists only of blocked words"),
            BlockReason::Pattern(_) => f.write_str("message matches a blocked pattern"),
        }
    }
}

/// The configured block list and patterns. Immutable once built, so each core can hold its own
/// copy (or share one behind an `Arc`) without coordination.
#[derive(Debug, Clone)]
pub struct Moderator {
    /// Blocked words in folded form ([`normalize::fold`], lowercased), as text words are compared.
    words: HashSet<Box<str>>,
    /// Length in bytes of the longest folded word: a text word that folds to more bytes cannot
    /// match, which lets the scan stop folding early and keeps the common case on the stack.
    max_word_bytes: usize,
    /// All patterns compiled case-insensitive into one automaton, so a message is scanned once
    /// however many patterns there are; `None` when no patterns are configured.
    patterns: Option<RegexSet>,
    /// Source text of each pattern, indexed like `patterns`, for [`BlockReason::Pattern`].
    pattern_sources: Vec<String>,
}

/// Result of one pass over the words of a message.
struct Scan {
    /// Number of word segments (segments containing a letter or digit).
    words: usize,
    /// How many of them are blocked.
    blocked: usize,
    /// Byte offset of the first blocked word, where masking has to start.
    first_blocked: Option<usize>,
}

impl Moderator {
    /// Builds a moderator from block-list words and regex patterns.
    ///
    /// Words are folded here like text ([`normalize`]), so callers may pass them in any case and
    /// spelling of accents; empty entries are ignored.
    /// Each entry is matched against one word of the text, so an entry that word segmentation
    /// would split (say "a-hole") can never match: such entries are ignored with a warning, and a
    /// pattern is the tool for them. Patterns are compiled case-insensitive; the first invalid one
    /// is reported.
    pub fn new(
        words: impl IntoIterator<Item = String>,
        patterns: &[String],
    ) -> Result<Self, ModerationError> {
        let mut set = HashSet::new();
        for word in words {
            let folded: String = normalize::fold(word.trim())
                .chars()
                .map(fold_char)
                .collect();
            if folded.is_empty() {
                continue;
            }
            if folded.split_word_bounds().nth(1).is_some() || !is_word(&folded) {
                tracing::warn!(word = %folded, "moderation entry is not a single word; ignored");
                continue;
            }
            set.insert(folded.into_boxed_str());
        }
        let max_word_bytes = set.iter().map(|w| w.len()).max().unwrap_or(0);

        // Compile each pattern alone first so an error names the pattern at fault; the set
        // builder only reports that *some* pattern is bad.
        for pattern in patterns {
            // Patterns see folded text, where an accented or non-ASCII-cased letter never occurs;
            // say so instead of letting such a pattern silently never match.
            if pattern.chars().any(|c| {
                let mut folded = String::new();
                normalize::fold_char_into(c, &mut folded);
                !c.is_ascii() && folded.chars().ne(std::iter::once(c))
            }) {
                tracing::warn!(
                    %pattern,
                    "moderation pattern has characters that folded text never contains \
                     (accents, non-ASCII capitals, look-alikes); write it in folded form"
                );
            }
            RegexBuilder::new(pattern)
                .case_insensitive(true)
                .build()
                .map_err(|e| ModerationError::BadPattern {
                    pattern: pattern.clone(),
                    reason: e.to_string(),
                })?;
        }
        let compiled = if patterns.is_empty() {
            None
        } else {
            let set = RegexSetBuilder::new(patterns)
                .case_insensitive(true)
                .build()
                .map_err(|e| ModerationError::BadPattern {
                    pattern: patterns.join(", "),
                    reason: e.to_string(),
                })?;
            Some(set)
        };

        Ok(Self {
            words: set,
            max_word_bytes,
            patterns: compiled,
            pattern_sources: patterns.to_vec(),
        })
    }

    /// The built-in block list: a short list of common English profanities and no slurs (a list of
    /// slurs does not belong in the source tree); deployments that need more set their own list.
    pub fn default_words() -> Vec<String> {
        DEFAULT_WORDS.iter().map(|w| w.to_string()).collect()
    }

    /// Parses `MODERATION_BLOCKLIST`: comma-separated words; each is trimmed and lowercased, and
    /// empty entries are dropped.
    pub fn parse_list(csv: &str) -> Vec<String> {
        csv.split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }

    /// Reads a block-list file: one word per line; everything after a `#` is a comment; lines are
    /// trimmed and lowercased, and blank lines are skipped.
    pub fn read_list_file(path: &Path) -> Result<Vec<String>, ModerationError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModerationError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(text
            .lines()
            .map(|line| line.split('#').next().unwrap_or("").trim())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect())
    }

    /// Whether neither words nor patterns are configured (moderation then never changes anything).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty() && self.patterns.is_none()
    }

    /// Masks every blocked word with one `*` per character. Borrows the input when nothing is
    /// masked, so clean messages cost no allocation.
    pub fn filter_message<'a>(&self, content: &'a str) -> Cow<'a, str> {
        if self.words.is_empty() {
            return Cow::Borrowed(content);
        }
        let folded = normalize::fold(content);
        match self.first_blocked(&folded) {
            None => Cow::Borrowed(content),
            Some(start) => Cow::Owned(self.mask(content, start)),
        }
    }

    /// The original `isMessageAllowed`: false when a refusal rule applies. Words that would merely
    /// be masked do not make a message disallowed.
    pub fn is_message_allowed(&self, content: &str) -> bool {
        self.block_reason(content).is_none()
    }

    /// Full decision for one message. A refusal wins over masking; patterns are checked first, as
    /// they are the operator's explicit rules.
    pub fn moderate(&self, content: &str) -> Verdict {
        if self.is_empty() {
            return Verdict::Clean;
        }
        let folded = normalize::fold(content);
        if let Some(reason) = self.pattern_match(&folded) {
            return Verdict::Blocked(reason);
        }
        if self.words.is_empty() {
            return Verdict::Clean;
        }
        let scan = self.scan(&folded, false);
        match scan.first_blocked {
            None => Verdict::Clean,
            Some(_) if scan.blocked == scan.words => {
                Verdict::Blocked(BlockReason::OnlyBlockedWords)
            }
            Some(start) => Verdict::Masked(self.mask(content, start)),
        }
    }

    /// The refusal rule that applies to `content`, if any.
    fn block_reason(&self, content: &str) -> Option<BlockReason> {
        let folded = normalize::fold(content);
        if let Some(reason) = self.pattern_match(&folded) {
            return Some(reason);
        }
        if self.words.is_empty() {
            return None;
        }
        let scan = self.scan(&folded, false);
        (scan.blocked > 0 && scan.blocked == scan.words).then_some(BlockReason::OnlyBlockedWords)
    }

    /// The first configured pattern (in configuration order) that matches `folded` (the content
    /// after [`normalize::fold`]).
    fn pattern_match(&self, folded: &str) -> Option<BlockReason> {
        let set = self.patterns.as_ref()?;
        // `is_match` is the cheap test; only a hit pays for finding which pattern it was.
        if !set.is_match(folded) {
            return None;
        }
        let index = set.matches(folded).into_iter().next()?;
        Some(BlockReason::Pattern(self.pattern_sources[index].clone()))
    }

    /// Byte offset in `folded` of the first blocked word, if any.
    fn first_blocked(&self, folded: &str) -> Option<usize> {
        self.scan(folded, true).first_blocked
    }

    /// One pass over the word segments of `folded` (the content after [`normalize::fold`]); with
    /// `stop_at_first` it returns as soon as a blocked word is found (enough for masking, not for
    /// the only-blocked-words rule).
    fn scan(&self, folded: &str, stop_at_first: bool) -> Scan {
        let mut scan = Scan {
            words: 0,
            blocked: 0,
            first_blocked: None,
        };
        for (offset, segment) in folded.split_word_bound_indices() {
            if !is_word(segment) {
                continue;
            }
            scan.words += 1;
            if self.is_blocked(segment) {
                scan.blocked += 1;
                if scan.first_blocked.is_none() {
                    scan.first_blocked = Some(offset);
                    if stop_at_first {
                        break;
                    }
                }
            }
        }
        scan
    }

    /// The masked copy of `content`, given the offset in its folded form of the first blocked
    /// word. Pure ASCII content is its own folded form (up to case, [`normalize::fold`] borrows
    /// it), so it is masked in place; other content is masked through the map from folded bytes
    /// back to the original.
    fn mask(&self, content: &str, start: usize) -> String {
        if content.is_ascii() {
            self.mask_from(content, start)
        } else {
            self.mask_mapped(content, start)
        }
    }

    /// Masks non-ASCII `content`: finds the blocked words in its folded form (from folded byte
    /// offset `start`, the first blocked word), and replaces the original characters each came
    /// from. Each replaced character becomes one `*`, except one that folds to nothing (an
    /// invisible character or a lone accent inside the word), which is removed; everything
    /// outside the matches is copied unchanged.
    fn mask_mapped(&self, content: &str, start: usize) -> String {
        let mapped = normalize::fold_mapped(content);
        let mut out = String::with_capacity(content.len());
        // Original bytes before this offset are already in `out`. One original character can
        // fold to several words ("¼" to "1⁄4"), so a match may begin inside what was copied.
        let mut copied = 0;
        for (offset, segment) in mapped.text[start..].split_word_bound_indices() {
            if !(is_word(segment) && self.is_blocked(segment)) {
                continue;
            }
            let from = start + offset;
            let span = mapped.original(from..from + segment.len());
            let span = span.start.max(copied)..span.end.max(copied);
            out.push_str(&content[copied..span.start]);
            let stars = content[span.clone()]
                .chars()
                .filter(|&c| !normalize::folds_to_nothing(c))
                .count();
            out.extend(std::iter::repeat_n('*', stars));
            copied = span.end;
        }
        out.push_str(&content[copied..]);
        out
    }

    /// Copies ASCII `content`, masking blocked words from byte offset `start` (the first blocked
    /// word) onwards; the part before it is known to be clean and is copied as is.
    fn mask_from(&self, content: &str, start: usize) -> String {
        let mut out = String::with_capacity(content.len());
        out.push_str(&content[..start]);
        for segment in content[start..].split_word_bounds() {
            if is_word(segment) && self.is_blocked(segment) {
                out.extend(std::iter::repeat_n('*', segment.chars().count()));
            } else {
                out.push_str(segment);
            }
        }
        out
    }

    /// Whether one word segment is on the block list, comparing case-insensitively without
    /// allocating for words up to [`FOLD_BUF`] bytes.
    fn is_blocked(&self, segment: &str) -> bool {
        let mut buf = [0u8; FOLD_BUF];
        let mut len = 0;
        for c in segment.chars().map(fold_char) {
            let n = c.len_utf8();
            if len + n > self.max_word_bytes {
                // Longer than any listed word: cannot match.
                return false;
            }
            if len + n > FOLD_BUF {
                // Only reachable when a listed word is longer than the stack buffer.
                let folded: String = segment.chars().map(fold_char).collect();
                return self.words.contains(folded.as_str());
            }
            c.encode_utf8(&mut buf[len..]);
            len += n;
        }
        // The buffer holds whole UTF-8 encoded chars only, so this cannot fail.
        std::str::from_utf8(&buf[..len]).is_ok_and(|w| self.words.contains(w))
    }
}

/// Whether a segment from word segmentation is a word (rather than spaces or punctuation).
fn is_word(segment: &str) -> bool {
    segment.chars().any(char::is_alphanumeric)
}

/// What an audit record says happened: moderation's decisions on a message, and the operator
/// API's actions (contract section 8), which also name the acting admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// Stored and broadcast with blocked words masked.
    Masked,
    /// Refused with `message_blocked`.
    Blocked,
    /// An operator published the message (`POST /api/chats/rooms/{roomId}/messages`).
    Published,
    /// An operator deleted the message from history.
    Deleted,
    /// An operator banned the user (the record's `until_ms` says until when).
    Banned,
    /// An operator lifted the user's ban.
    Unbanned,
    /// An operator closed every connection of the user.
    Disconnected,
}

impl AuditAction {
    /// The stable name used in logs and the audit table.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Masked => "masked",
            AuditAction::Blocked => "blocked",
            AuditAction::Published => "published",
            AuditAction::Deleted => "deleted",
            AuditAction::Banned => "banned",
            AuditAction::Unbanned => "unbanned",
            AuditAction::Disconnected => "disconnected",
        }
    }

    /// The operator API's actions, in rendering order (their `/metrics` series).
    pub const OPERATOR: [AuditAction; 5] = [
        AuditAction::Published,
        AuditAction::Deleted,
        AuditAction::Banned,
        AuditAction::Unbanned,
        AuditAction::Disconnected,
    ];
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit trail entry (the original `auditMessage(messageId, userId, action)` plus room,
/// reason and time; for an operator action also the acting admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Id of the message; a blocked message gets an id too so its record can be referenced. An
    /// action on a user (ban, unban, disconnect) has no message: it gets a fresh id of its own,
    /// so every record has a unique key.
    pub message_id: ulid::Ulid,
    /// The sender's user id, from the verified token; for an action on a user, that user.
    pub user_id: Arc<str>,
    /// Room the message was sent to; empty for an action on a user.
    pub room_id: Arc<str>,
    /// What moderation did.
    pub action: AuditAction,
    /// Why, when known (for a block, the rule or pattern that refused it).
    pub reason: Option<String>,
    /// Wall-clock time of the decision, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The admin who acted (the token's user id); None for moderation's own decisions.
    pub actor: Option<Arc<str>>,
    /// For [`AuditAction::Banned`]: when the ban ends, ms since the Unix epoch. A durable sink
    /// also keeps the ban itself from this record (so it outlives a restart).
    pub until_ms: Option<u64>,
}

/// Where audit records go (one sink per core, held by the hub). The default sink,
/// [`MemoryAudit`], keeps the newest records in memory and also logs each one with
/// `tracing::info!(target: "audit", ...)` as structured fields; with DATABASE_URL,
/// [`crate::pg::audit::PgAudit`] does the same and writes each record to Postgres.
pub trait AuditSink {
    /// Takes one record. Must not block: it is called on the message path.
    fn record(&mut self, record: AuditRecord);
}

/// In-memory audit sink: a ring of the newest `capacity` records, each also logged.
///
/// At the bound the oldest record is dropped and counted in [`MemoryAudit::dropped`]; the log line
/// for it was already written, so the record is not lost from the logs.
#[derive(Debug)]
pub struct MemoryAudit {
    /// Newest records, oldest first; never longer than `capacity`.
    ring: VecDeque<AuditRecord>,
    /// Maximum number of records kept.
    capacity: usize,
    /// Records pushed out of the ring (or not kept at all when `capacity` is 0).
    dropped: u64,
}

impl MemoryAudit {
    /// A ring keeping the newest `capacity` records. With 0 nothing is kept, only logged.
    pub fn new(capacity: usize) -> Self {
        Self {
            // Grow on demand: a large configured capacity should not be paid for up front.
            ring: VecDeque::new(),
            capacity,
            dropped: 0,
        }
    }

    /// The kept records, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &AuditRecord> {
        self.ring.iter()
    }

    /// Number of records dropped at the bound since creation.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl AuditSink for MemoryAudit {
    fn record(&mut self, record: AuditRecord) {
        tracing::info!(
            target: "audit",
            message_id = %record.message_id,
            user_id = %record.user_id,
            room_id = %record.room_id,
            action = record.action.as_str(),
            reason = record.reason.as_deref(),
            at_ms = record.at_ms,
            actor = record.actor.as_deref(),
            until_ms = record.until_ms,
            "moderation audit"
        );
        if self.capacity == 0 {
            self.dropped += 1;
            return;
        }
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
            self.dropped += 1;
        }
        self.ring.push_back(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    fn moderator(list: &[&str]) -> Moderator {
        Moderator::new(words(list), &[]).unwrap()
    }

    #[test]
    fn masks_regardless_of_case_and_punctuation() {
        let m = moderator(&["shit", "damn"]);
        assert_eq!(m.filter_message("Shit! that hurt"), "****! that hurt");
        assert_eq!(m.filter_message("oh SHIT, DaMn."), "oh ****, ****.");
        assert_eq!(m.filter_message("(shit) \"damn\""), "(****) \"****\"");
        assert_eq!(
            m.moderate("well, shit happens"),
            Verdict::Masked("well, **** happens".to_string())
        );
    }

    #[test]
    fn list_entries_in_any_case_match() {
        let m = moderator(&["  Crap "]);
        assert_eq!(m.filter_message("what crap"), "what ****");
    }

    #[test]
    fn whole_words_only() {
        let m = moderator(&["ass"]);
        for clean in ["class", "assessment", "bass guitar", "passes"] {
            assert!(
                matches!(m.filter_message(clean), Cow::Borrowed(_)),
                "{clean}"
            );
            assert_eq!(m.moderate(clean), Verdict::Clean, "{clean}");
        }
        assert_eq!(m.filter_message("bad ass class"), "bad *** class");
    }

    #[test]
    fn non_ascii_words_are_masked_by_character_count() {
        let m = moderator(&["scheiße", "мат"]);
        assert_eq!(m.filter_message("So eine SCHEIßE!"), "So eine *******!");
        assert_eq!(m.filter_message("это МАТ, да"), "это ***, да");
        // Inside a longer word it is left alone.
        assert!(matches!(m.filter_message("математика"), Cow::Borrowed(_)));
    }

    #[test]
    fn greek_final_sigma_compares_equal() {
        let m = moderator(&["μαλάκας"]);
        assert_eq!(m.filter_message("ΜΑΛΆΚΑΣ!"), "*******!");
        assert_eq!(m.filter_message("μαλάκας"), "*******");
    }

    #[test]
    fn clean_text_is_borrowed() {
        let m = Moderator::new(Moderator::default_words(), &[]).unwrap();
        let text = "Hello everyone, the build is green!";
        assert!(matches!(m.filter_message(text), Cow::Borrowed(t) if t == text));
        assert_eq!(m.moderate(text), Verdict::Clean);
        assert!(m.is_message_allowed(text));
        // A word longer than every listed word takes the early exit.
        assert!(matches!(
            m.filter_message("supercalifragilisticexpialidocious"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn only_blocked_words_is_refused() {
        let m = moderator(&["damn", "crap"]);
        let blocked = Verdict::Blocked(BlockReason::OnlyBlockedWords);
        assert_eq!(m.moderate("damn"), blocked);
        assert_eq!(m.moderate("  DAMN!!! crap... "), blocked);
        assert!(!m.is_message_allowed("crap, crap"));
        // One ordinary word is enough to mask instead.
        assert_eq!(
            m.moderate("damn it"),
            Verdict::Masked("**** it".to_string())
        );
        assert!(m.is_message_allowed("damn it"));
        // No words at all is not "only blocked words".
        assert_eq!(m.moderate("?!"), Verdict::Clean);
        assert!(m.is_message_allowed("?!"));
    }

    #[test]
    fn patterns_refuse_case_insensitively_and_name_the_pattern() {
        let patterns = words(&[r"buy\s+now", r"https?://spam\.example"]);
        let m = Moderator::new(words(&["damn"]), &patterns).unwrap();
        assert_eq!(
            m.moderate("damn, BUY   Now!"),
            Verdict::Blocked(BlockReason::Pattern(r"buy\s+now".to_string()))
        );
        assert_eq!(
            m.moderate("see HTTP://SPAM.example/x"),
            Verdict::Blocked(BlockReason::Pattern(r"https?://spam\.example".to_string()))
        );
        assert!(!m.is_message_allowed("buy now"));
        assert!(m.is_message_allowed("I will buy it later"));
        // Patterns do not mask: filter_message only applies the word list.
        assert_eq!(m.filter_message("buy now"), "buy now");
    }

    #[test]
    fn patterns_without_words() {
        let m = Moderator::new(Vec::new(), &words(&["forbidden"])).unwrap();
        assert_eq!(m.moderate("fine"), Verdict::Clean);
        assert!(matches!(m.moderate("FORBIDDEN"), Verdict::Blocked(_)));
    }

    #[test]
    fn empty_configuration_changes_nothing() {
        let m = Moderator::new(Vec::new(), &[]).unwrap();
        assert!(m.is_empty());
        assert_eq!(m.moderate("shit"), Verdict::Clean);
        assert!(matches!(m.filter_message("shit"), Cow::Borrowed("shit")));
        assert!(m.is_message_allowed("shit"));
    }

    #[test]
    fn multi_word_entries_are_ignored() {
        let m = moderator(&["a-hole", "two words", "!!", "ok"]);
        assert_eq!(m.words.len(), 1);
        assert_eq!(m.filter_message("a-hole ok"), "a-hole **");
    }

    #[test]
    fn invalid_pattern_error_names_it() {
        let err = Moderator::new(Vec::new(), &words(&["fine", "(unclosed"])).unwrap_err();
        assert!(
            matches!(&err, ModerationError::BadPattern { pattern, .. } if pattern == "(unclosed")
        );
        let text = err.to_string();
        assert!(
            text.starts_with("invalid moderation pattern \"(unclosed\": "),
            "{text}"
        );
        assert!(text.contains("unclosed group"), "{text}");
    }

    #[test]
    fn block_reason_display() {
        assert_eq!(
            BlockReason::OnlyBlockedWords.to_string(),
            "message consists only of blocked words"
        );
        assert_eq!(
            BlockReason::Pattern("secret".into()).to_string(),
            "message matches a blocked pattern"
        );
    }

    #[test]
    fn parse_list_trims_lowercases_and_drops_empties() {
        assert_eq!(
            Moderator::parse_list(" Foo, ,BAR ,,Scheiße,"),
            vec!["foo", "bar", "scheiße"]
        );
        assert!(Moderator::parse_list(" , ").is_empty());
    }

    #[test]
    fn read_list_file_skips_comments_and_blanks() {
        let path =
            std::env::temp_dir().join(format!("chatd-moderation-test-{}.txt", std::process::id()));
        std::fs::write(
            &path,
            "# block list\nFoo\n\n  bar  # trailing comment\n#baz\n",
        )
        .unwrap();
        let list = Moderator::read_list_file(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(list.unwrap(), vec!["foo", "bar"]);

        let missing = Path::new("/nonexistent/chatd/blocklist.txt");
        let err = Moderator::read_list_file(missing).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot read moderation file /nonexistent/chatd/blocklist.txt: "));
    }

    #[test]
    fn default_list_masks_common_words() {
        let m = Moderator::new(Moderator::default_words(), &[]).unwrap();
        assert_eq!(m.filter_message("what the fuck"), "what the ****");
        assert!(!Moderator::default_words().is_empty());
    }

    // ---- look-alike and invisible characters ----------------------------------------------

    #[test]
    fn zero_width_characters_do_not_hide_a_word() {
        let m = moderator(&["darn"]);
        // Zero-width space, non-joiner, joiner, word joiner, BOM.
        for invisible in ['\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}'] {
            let text = format!("oh d{invisible}ar{invisible}n it");
            assert_eq!(m.filter_message(&text), "oh **** it", "{text:?}");
        }
    }

    #[test]
    fn soft_hyphen_does_not_hide_a_word() {
        let m = moderator(&["darn"]);
        assert_eq!(m.filter_message("oh d\u{AD}arn it"), "oh **** it");
    }

    #[test]
    fn variation_selectors_and_tags_do_not_hide_a_word() {
        let m = moderator(&["darn"]);
        assert_eq!(m.filter_message("da\u{FE0F}rn it"), "**** it");
        assert_eq!(m.filter_message("dar\u{E0061}n it"), "**** it");
        assert_eq!(m.filter_message("d\u{180E}arn it"), "**** it");
    }

    #[test]
    fn full_width_letters_match() {
        let m = moderator(&["darn"]);
        assert_eq!(m.filter_message("ｄａｒｎ it"), "**** it");
        assert_eq!(m.filter_message("ＤＡＲＮ it"), "**** it");
        // Mathematical bold letters fold the same way (NFKC).
        assert_eq!(m.filter_message("𝐝𝐚𝐫𝐧 it"), "**** it");
    }

    #[test]
    fn cyrillic_and_greek_look_alikes_match() {
        let m = moderator(&["darn", "shit", "poop"]);
        // Cyrillic а (U+0430).
        assert_eq!(m.filter_message("d\u{430}rn it"), "**** it");
        // Cyrillic capital А (U+0410) and Ukrainian і (U+0456).
        assert_eq!(m.filter_message("D\u{410}RN it"), "**** it");
        assert_eq!(m.filter_message("sh\u{456}t happens"), "**** happens");
        // Cyrillic р and о, Greek ο.
        assert_eq!(m.filter_message("\u{440}\u{43E}\u{3BF}p"), "****");
        assert_eq!(
            m.moderate("my \u{440}\u{43E}\u{3BF}p"),
            Verdict::Masked("my ****".into())
        );
    }

    #[test]
    fn combining_accents_do_not_hide_a_word() {
        let m = moderator(&["darn"]);
        // Precomposed á (U+00E1), a typed combining acute (U+0301), several stacked marks.
        assert_eq!(m.filter_message("d\u{E1}rn it"), "**** it");
        assert_eq!(m.filter_message("da\u{301}rn it"), "**** it");
        assert_eq!(m.filter_message("d\u{323}a\u{301}\u{308}rn it"), "**** it");
        // A mark after the last letter goes with the word rather than sitting on a `*`.
        assert_eq!(m.filter_message("darn\u{301} it"), "**** it");
    }

    #[test]
    fn all_tricks_at_once_and_only_blocked_words() {
        let m = moderator(&["darn"]);
        let text = "ｄ\u{200B}\u{430}\u{301}r\u{AD}n";
        assert_eq!(m.filter_message(text), "****");
        assert_eq!(
            m.moderate(text),
            Verdict::Blocked(BlockReason::OnlyBlockedWords)
        );
        assert_eq!(
            m.moderate("ｄａｒｎ!! DARN"),
            Verdict::Blocked(BlockReason::OnlyBlockedWords)
        );
    }

    #[test]
    fn the_original_is_kept_outside_matches() {
        let m = moderator(&["darn"]);
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        let text = format!("Café ☕ ｄａｒｎ {family} naïve ＯＫ d\u{430}rn! ✌\u{FE0F}");
        let want = format!("Café ☕ **** {family} naïve ＯＫ ****! ✌\u{FE0F}");
        assert_eq!(m.filter_message(&text), want);
        assert_eq!(m.moderate(&text), Verdict::Masked(want));
        // Invisible characters next to (not inside) a match are kept too.
        assert_eq!(
            m.filter_message("\u{200B}darn\u{200B} é"),
            "\u{200B}****\u{200B} é"
        );
    }

    #[test]
    fn masks_are_one_star_per_visible_original_character() {
        let m = moderator(&["darn", "fine"]);
        // The ligature ﬁ is one character standing for "fi": one star.
        assert_eq!(m.filter_message("\u{FB01}ne day"), "*** day");
        // Invisible characters and accents inside the word leave no star of their own.
        assert_eq!(m.filter_message("é d\u{200B}a\u{301}rn é"), "é **** é");
        // Masking never leaves part of an original character behind.
        let masked = m.filter_message("ｄａｒｎ\u{301}ｄ");
        assert_eq!(masked, "ｄａｒｎ\u{301}ｄ", "one longer word: clean");
    }

    #[test]
    fn one_character_folding_to_several_words_is_masked_once() {
        // ¼ folds to "1⁄4": two listed words from one original character.
        let m = moderator(&["1", "4"]);
        assert_eq!(m.filter_message("a \u{BC} b"), "a * b");
    }

    #[test]
    fn list_entries_are_folded_like_text() {
        let m = moderator(&["ＤÁＲＮ", "d\u{200B}amn"]);
        assert_eq!(m.filter_message("darn, damn"), "****, ****");
        assert_eq!(m.filter_message("d\u{430}rn"), "****");
    }

    #[test]
    fn ascii_is_compared_as_typed() {
        // UTS #39 would make "dam" a look-alike of "darn" (m as rn) and "SHIT" unequal to "shit"
        // (I as l); ASCII is only lowercased, so neither happens.
        let m = moderator(&["darn", "shit"]);
        assert!(matches!(
            m.filter_message("the dam broke"),
            Cow::Borrowed(_)
        ));
        assert_eq!(m.filter_message("SHIT happens"), "**** happens");
        assert_eq!(m.moderate("a dam"), Verdict::Clean);
        // ...while a non-ASCII look-alike of "m" is folded to "m", not "rn".
        let m = moderator(&["damn"]);
        assert_eq!(m.filter_message("da\u{FF4D}n it"), "**** it");
        assert_eq!(m.filter_message("da\u{1E43}n it"), "**** it");
    }

    #[test]
    fn clean_non_ascii_text_is_borrowed() {
        let m = Moderator::new(Moderator::default_words(), &[]).unwrap();
        let text = "Grüße aus Köln 👋 — на связи, ｏｋ?";
        assert!(matches!(m.filter_message(text), Cow::Borrowed(t) if t == text));
        assert_eq!(m.moderate(text), Verdict::Clean);
    }

    #[test]
    fn patterns_match_the_folded_text() {
        let m = Moderator::new(Vec::new(), &words(&[r"buy\s+now"])).unwrap();
        let blocked = Verdict::Blocked(BlockReason::Pattern(r"buy\s+now".to_string()));
        for text in [
            "ＢＵＹ ＮＯＷ",
            "b\u{200B}uy n\u{AD}ow",
            "buy n\u{43E}w",
            "bu\u{301}y\u{3000}now",
        ] {
            assert_eq!(m.moderate(text), blocked, "{text:?}");
            assert!(!m.is_message_allowed(text), "{text:?}");
        }
        assert_eq!(m.moderate("buy nothing"), Verdict::Clean);
    }

    fn record(n: u64, action: AuditAction) -> AuditRecord {
        AuditRecord {
            message_id: ulid::Ulid::from_parts(n, 0),
            user_id: Arc::from("u1"),
            room_id: Arc::from("general"),
            action,
            reason: None,
            at_ms: n,
            actor: None,
            until_ms: None,
        }
    }

    #[test]
    fn audit_ring_keeps_newest_and_counts_drops() {
        let mut audit = MemoryAudit::new(2);
        audit.record(record(1, AuditAction::Masked));
        audit.record(record(2, AuditAction::Blocked));
        assert_eq!(audit.dropped(), 0);
        audit.record(record(3, AuditAction::Masked));
        let kept: Vec<u64> = audit.records().map(|r| r.at_ms).collect();
        assert_eq!(kept, vec![2, 3]);
        assert_eq!(audit.dropped(), 1);
    }

    #[test]
    fn audit_zero_capacity_keeps_nothing() {
        let mut audit = MemoryAudit::new(0);
        audit.record(record(1, AuditAction::Blocked));
        assert_eq!(audit.records().count(), 0);
        assert_eq!(audit.dropped(), 1);
    }

    #[test]
    fn audit_action_names() {
        assert_eq!(AuditAction::Masked.as_str(), "masked");
        assert_eq!(AuditAction::Blocked.to_string(), "blocked");
        let names: Vec<&str> = AuditAction::OPERATOR.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            names,
            ["published", "deleted", "banned", "unbanned", "disconnected"]
        );
    }
}
