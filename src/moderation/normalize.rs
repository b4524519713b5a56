//! The form of a message that moderation matches against, and the way back to the original text.
//!
//! Block-list words and patterns are matched against a *folded* copy of the content, so that
//! look-alike and invisible characters cannot walk around them. Each character of the original
//! is folded on its own, in this order:
//!
//! 1. ASCII is kept, lowercased, and nothing else is done to it (see "ASCII" below).
//! 2. Otherwise it is decomposed for compatibility (NFKD: full-width "ｄ" and "𝐝" become "d",
//!    "ﬁ" becomes "fi", "é" becomes "e" + U+0301). Matching on NFKC and then taking NFD, as the
//!    rules ask, gives exactly this decomposition: NFD(NFKC(x)) = NFKD(x) up to the order of
//!    combining marks, and those are dropped in the next step anyway.
//! 3. Default-ignorable code points (zero-width space, joiner and non-joiner, soft hyphen, word
//!    joiner, BOM, variation selectors, Hangul fillers, tags, ...) and nonspacing marks (general
//!    category Mn: accents, including a combining accent typed after a letter) are dropped.
//! 4. What is left is lowercased (per character, with the Greek final sigma as `σ`).
//! 5. A non-ASCII result is replaced by its UTS #39 confusable prototype (the `skeleton` of the
//!    `unicode-security` crate), lowercased again: Cyrillic "а", "е", "о", "р", "с" become Latin
//!    "a", "e", "o", "p", "c". Prototypes that UTS #39 writes as "rn" (the look-alikes of "m") are
//!    written "m", because "m" is how the ASCII letter itself is kept (rule 1).
//!
//! ASCII: the UTS #39 skeleton also folds ASCII into ASCII ("m" → "rn", "I" and "1" → "l",
//! "0" → "O"). That is right for telling two identifiers apart, but wrong for a block list:
//! with it a listed "darn" would mask the ordinary word "dam", and "shit" would no longer equal
//! "SHIT" once lowercased ("SHlT"). So ASCII characters are only lowercased: what a keyboard types
//! directly is compared as typed, and only characters from outside ASCII are folded onto ASCII
//! look-alikes. Digits standing in for letters ("sh1t") are therefore not caught; that is a
//! choice of words for the block list, not a Unicode trick.
//!
//! Because ASCII folds to itself up to case, pure ASCII content needs none of this: the caller
//! matches it as it is (case-insensitively), which is the fast path for most messages.
//!
//! Masking replaces text in the *original* content, so [`fold_mapped`] also records, for each byte
//! of the folded text, the byte range of the original character it came from.

use std::borrow::Cow;
use std::ops::Range;

use unicode_normalization::char::decompose_compatible;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// The Default_Ignorable_Code_Point ranges of DerivedCoreProperties.txt (Unicode 16.0, unchanged
/// through 18.0), sorted and disjoint, for a binary search.
const DEFAULT_IGNORABLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),   // soft hyphen
    ('\u{034F}', '\u{034F}'),   // combining grapheme joiner
    ('\u{061C}', '\u{061C}'),   // Arabic letter mark
    ('\u{115F}', '\u{1160}'),   // Hangul choseong and jungseong fillers
    ('\u{17B4}', '\u{17B5}'),   // Khmer inherent vowels
    ('\u{180B}', '\u{180F}'),   // Mongolian free variation selectors, vowel separator
    ('\u{200B}', '\u{200F}'),   // zero-width space, non-joiner, joiner, LRM, RLM
    ('\u{202A}', '\u{202E}'),   // bidirectional embeddings and overrides
    ('\u{2060}', '\u{206F}'),   // word joiner, invisible operators, bidi isolates, deprecated
    ('\u{3164}', '\u{3164}'),   // Hangul filler
    ('\u{FE00}', '\u{FE0F}'),   // variation selectors 1-16
    ('\u{FEFF}', '\u{FEFF}'),   // zero-width no-break space (BOM)
    ('\u{FFA0}', '\u{FFA0}'),   // half-width Hangul filler
    ('\u{FFF0}', '\u{FFF8}'),   // unassigned, reserved as ignorable
    ('\u{1BCA0}', '\u{1BCA3}'), // shorthand format controls
    ('\u{1D173}', '\u{1D17A}'), // musical symbol format controls
    ('\u{E0000}', '\u{E0FFF}'), // tags, variation selectors 17-256, reserved
];

/// Whether `c` is a Default_Ignorable_Code_Point: it has no visible form of its own.
pub fn is_default_ignorable(c: char) -> bool {
    // Everything below the soft hyphen (all of ASCII included) is not ignorable; checking that
    // first keeps the common case to one comparison.
    if c < '\u{00AD}' {
        return false;
    }
    DEFAULT_IGNORABLE
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether `content` shows nothing: every character is whitespace or default-ignorable (so an
/// empty string is blank too). Such content is refused as `invalid_message`, like whitespace.
pub fn is_blank(content: &str) -> bool {
    content
        .chars()
        .all(|c| c.is_whitespace() || is_default_ignorable(c))
}

/// The folded form of `content` (see the module documentation). Pure ASCII is returned borrowed
/// and *not* lowercased: callers compare it case-insensitively, which folds ASCII completely, so
/// copying it would be wasted work.
pub fn fold(content: &str) -> Cow<'_, str> {
    if content.is_ascii() {
        return Cow::Borrowed(content);
    }
    let mut out = String::with_capacity(content.len());
    for c in content.chars() {
        fold_char_into(c, &mut out);
    }
    Cow::Owned(out)
}

/// Folded text with the way back to the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The folded text, exactly as [`fold`] makes it for non-ASCII content (but also lowercased
    /// for ASCII content).
    pub text: String,
    /// For each byte of `text`, the byte range in the original content of the character it came
    /// from, widened over the marks that follow that character and fold to nothing (so masking a
    /// word also removes the accents typed after its last letter instead of leaving them to sit
    /// on a `*`). Same length as `text`.
    origin: Vec<Range<u32>>,
}

impl Mapped {
    /// The range of original bytes that the folded bytes `range` came from: from the start of the
    /// original character of its first byte to the end of that of its last one. An empty range
    /// maps to an empty range.
    pub fn original(&self, range: Range<usize>) -> Range<usize> {
        if range.is_empty() {
            let at = self
                .origin
                .get(range.start)
                .map_or(usize::MAX, |r| r.start as usize);
            return at..at;
        }
        let first = &self.origin[range.start];
        let last = &self.origin[range.end - 1];
        first.start as usize..last.end as usize
    }
}

/// [`fold`] that also records where each folded byte came from. Used only when something matched
/// and has to be masked, so the clean path never pays for the map.
pub fn fold_mapped(content: &str) -> Mapped {
    let mut text = String::with_capacity(content.len());
    let mut origin: Vec<Range<u32>> = Vec::with_capacity(content.len());
    // Index in `origin` where the last character that produced output starts, to widen it over
    // the marks that follow it.
    let mut last_output: Option<usize> = None;
    for (at, c) in content.char_indices() {
        let start = at as u32;
        let end = (at + c.len_utf8()) as u32;
        let before = text.len();
        fold_char_into(c, &mut text);
        if text.len() > before {
            origin.extend(std::iter::repeat_n(start..end, text.len() - before));
            last_output = Some(before);
        } else if is_mark(c) {
            if let Some(from) = last_output {
                for r in &mut origin[from..] {
                    r.end = end;
                }
            }
        }
    }
    Mapped { text, origin }
}

/// Whether `c` folds to nothing at all (it is ignorable, or only a nonspacing mark). Masking
/// writes no `*` for such a character: it has no visible width of its own.
pub fn folds_to_nothing(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    let mut produced = false;
    decompose_compatible(c, |d| {
        produced |= !is_dropped(d);
    });
    !produced
}

/// Appends the folded form of one original character to `out`.
pub fn fold_char_into(c: char, out: &mut String) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
        return;
    }
    decompose_compatible(c, |d| fold_decomposed(d, out));
}

/// Folds one character of a compatibility decomposition (rules 3 to 5 of the module docs).
fn fold_decomposed(d: char, out: &mut String) {
    if d.is_ascii() {
        out.push(d.to_ascii_lowercase());
        return;
    }
    if is_dropped(d) {
        return;
    }
    let lower = lower_char(d);
    if lower.is_ascii() {
        out.push(lower);
        return;
    }
    let mut buf = [0u8; 4];
    let start = out.len();
    // The skeleton of one character is its prototype in NFD; marks it brings (UTS #39 writes
    // some look-alikes as letter + mark) are dropped like typed ones.
    for p in unicode_security::skeleton(lower.encode_utf8(&mut buf)) {
        if !is_dropped(p) {
            out.push(lower_char(p));
        }
    }
    // UTS #39 writes every look-alike of "m" as "rn"; ASCII "m" itself stays "m" here (rule 1),
    // so its look-alikes must too.
    if out[start..].contains("rn") {
        let replaced = out[start..].replace("rn", "m");
        out.truncate(start);
        out.push_str(&replaced);
    }
}

/// Whether a decomposed character is left out of the folded text.
fn is_dropped(c: char) -> bool {
    is_default_ignorable(c) || c.general_category() == GeneralCategory::NonspacingMark
}

/// Whether `c` is a combining mark (Mn, Mc or Me): it belongs to the character before it.
fn is_mark(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Mark
}

/// Lowercases one character for comparison. `char::to_lowercase` is per character (unlike
/// `str::to_lowercase`, which lowers a word-final Greek capital sigma to `ς`), so the Greek final
/// sigma is mapped to `σ` here to make "ΜΑΛΑΚΑΣ" and "μαλάκας"-style spellings compare equal
/// regardless of position. The rare characters whose lowercase is several characters keep only
/// the first (İ lowercases to "i̇"; comparing "i" is what a user would expect anyway).
pub fn lower_char(c: char) -> char {
    let lower = c.to_lowercase().next().unwrap_or(c);
    if lower == 'ς' {
        'σ'
    } else {
        lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ignorable_table_agrees_with_the_uts39_tables() {
        // unicode-security drops exactly the default-ignorable code points from a skeleton and
        // maps nothing else to nothing, so the two lists must agree on every code point.
        let mut buf = [0u8; 4];
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let vanishes = unicode_security::skeleton(c.encode_utf8(&mut buf))
                .next()
                .is_none();
            assert_eq!(is_default_ignorable(c), vanishes, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn blank_is_whitespace_or_invisible_only() {
        for blank in [
            "",
            " \t\n",
            "\u{200B}\u{200C}",
            "\u{200D}\u{2060}\u{FEFF}",
            "\u{AD} \u{FE0F}\u{3164}\u{115F}",
            "\u{E0041}\u{E0042}",
        ] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for visible in ["a", "\u{200B}a", ".", "\u{1F44B}", "\u{301}"] {
            assert!(!is_blank(visible), "{visible:?}");
        }
    }

    #[test]
    fn fold_borrows_ascii_and_folds_the_rest() {
        assert!(matches!(
            fold("Plain ASCII!"),
            Cow::Borrowed("Plain ASCII!")
        ));
        for (text, want) in [
            ("ｄａｒｎ", "darn"),
            ("d\u{200B}arn", "darn"),
            ("d\u{430}rn", "darn"),
            ("d\u{AD}arn", "darn"),
            ("da\u{301}rn", "darn"),
            ("D\u{E1}RN", "darn"),
            ("\u{FB01}", "fi"),
            ("ΜΑΛΆΚΑΣ", "μaλaĸao"),
            ("\u{1F44B}", "\u{1F44B}"),
            ("a\u{1F468}\u{200D}\u{1F469}", "a\u{1F468}\u{1F469}"),
        ] {
            assert_eq!(fold(text), want, "{text:?}");
        }
    }

    #[test]
    fn every_look_alike_of_m_folds_to_m() {
        // UTS #39 writes them all "rn"; rule 5 turns that back into "m".
        for c in ['\u{FF4D}', '\u{217F}', '\u{1E43}', '\u{0271}', '\u{1D426}'] {
            let mut out = String::new();
            fold_char_into(c, &mut out);
            assert_eq!(out, "m", "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn the_map_leads_back_to_the_original_characters() {
        let text = "ｄ\u{200B}a\u{301}x";
        let mapped = fold_mapped(text);
        assert_eq!(mapped.text, "dax");
        // "ｄ" is bytes 0..3, the zero-width space 3..6, "a" 6..7, the accent 7..9, "x" 9..10.
        assert_eq!(mapped.original(0..1), 0..3);
        assert_eq!(
            mapped.original(1..2),
            6..9,
            "the accent goes with its letter"
        );
        assert_eq!(mapped.original(0..2), 0..9);
        assert_eq!(mapped.original(2..3), 9..10);
        assert_eq!(mapped.origin.len(), mapped.text.len());
        // One character folding to several bytes maps every one of them to itself.
        let mapped = fold_mapped("\u{FB01}!");
        assert_eq!(mapped.text, "fi!");
        assert_eq!(mapped.original(1..2), 0..3);
        assert_eq!(mapped.original(2..3), 3..4);
    }

    #[test]
    fn folding_to_nothing() {
        for c in ['\u{200B}', '\u{AD}', '\u{301}', '\u{FE0F}'] {
            assert!(folds_to_nothing(c), "U+{:04X}", c as u32);
        }
        for c in ['a', ' ', '\u{E1}', '\u{FB01}', '\u{1F44B}'] {
            assert!(!folds_to_nothing(c), "U+{:04X}", c as u32);
        }
    }
}
