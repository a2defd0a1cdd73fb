//! Codecs of the bit-packed words of the file (see the byte map in `layout`).
//!
//! Each packed word has a type here whose named fields are the word's fields, and
//! every read or write of such a word goes through its codec, so that the masks and
//! shifts of the format are written once. The types are `Copy`, and `encode` and
//! `decode` are `#[inline]` const fns: they compile to the masks and shifts the code
//! would otherwise spell out, so probes and record decoding pay nothing for them.
//!
//! `decode` takes any word and never panics: a reader racing a writer, or a damaged
//! file, can hand it anything, and the caller checks the fields. `encode` keeps every
//! field to its width (higher bits of a field are dropped, as the format always has).
#![deny(unsafe_code)]

use crate::layout::{INTENT_NONE, MAX_KEY_LIMIT, MAX_VALUE_LIMIT, STATE_PAD};

/// An index slot word: `0` is empty. Otherwise bits 0..32 hold the record's location
/// and bits 32..64 a 32-bit tag from the key's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotWord {
    /// Where the record starts: its offset from the start of the small log in 8-byte
    /// units, plus 1 (so that 0 names no record).
    pub loc: u32,
    /// 32 bits of the key's hash, compared before the key itself.
    pub tag: u32,
}

impl SlotWord {
    /// The empty slot (the word 0).
    pub(crate) const EMPTY: SlotWord = SlotWord { loc: 0, tag: 0 };

    #[inline]
    pub(crate) const fn encode(self) -> u64 {
        self.loc as u64 | ((self.tag as u64) << 32)
    }

    #[inline]
    pub(crate) const fn decode(w: u64) -> SlotWord {
        SlotWord {
            loc: w as u32,
            tag: (w >> 32) as u32,
        }
    }

    /// Whether this is the empty slot (the whole word 0).
    #[inline]
    pub(crate) const fn is_empty(self) -> bool {
        self.loc == 0 && self.tag == 0
    }
}

/// A log's state word: bits 0..32 the head, bits 32..64 the tail, both in 8-byte units
/// from the log's start. One store moves both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogState {
    /// The first record, in 8-byte units.
    pub head: u32,
    /// Where the next record goes, in 8-byte units.
    pub tail: u32,
}

impl LogState {
    #[inline]
    pub(crate) const fn encode(self) -> u64 {
        self.head as u64 | ((self.tail as u64) << 32)
    }

    #[inline]
    pub(crate) const fn decode(w: u64) -> LogState {
        LogState {
            head: w as u32,
            tail: (w >> 32) as u32,
        }
    }

    /// The state of a log whose ends are at these byte offsets (multiples of 8, inside
    /// a log, which the geometry keeps under 2^32 units).
    #[inline]
    pub(crate) const fn from_bytes(head: usize, tail: usize) -> LogState {
        LogState {
            head: (head / 8) as u32,
            tail: (tail / 8) as u32,
        }
    }

    /// The head as a byte offset from the log's start.
    #[inline]
    pub(crate) const fn head_bytes(self) -> usize {
        self.head as usize * 8
    }

    /// The tail as a byte offset from the log's start.
    #[inline]
    pub(crate) const fn tail_bytes(self) -> usize {
        self.tail as usize * 8
    }
}

/// Word 0 of a record: bits 0..16 the key length, bits 16..64 the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordWord0 {
    /// Bytes of the key (16 bits).
    pub key_len: usize,
    /// Expiry in ms on `CLOCK_MONOTONIC`, 0 for none (48 bits).
    pub expire: u64,
}

impl RecordWord0 {
    /// Largest key length the word holds.
    pub(crate) const MAX_KEY_LEN: usize = 0xffff;
    /// Largest expiry the word holds (48 bits of milliseconds).
    pub(crate) const MAX_EXPIRE: u64 = (1 << 48) - 1;
    /// Word 0 of a pad record.
    pub(crate) const PAD: RecordWord0 = RecordWord0 {
        key_len: 0,
        expire: 0,
    };

    #[inline]
    pub(crate) const fn encode(self) -> u64 {
        (self.key_len as u64 & Self::MAX_KEY_LEN as u64) | ((self.expire & Self::MAX_EXPIRE) << 16)
    }

    #[inline]
    pub(crate) const fn decode(w: u64) -> RecordWord0 {
        RecordWord0 {
            key_len: (w & Self::MAX_KEY_LEN as u64) as usize,
            expire: w >> 16,
        }
    }
}

/// Word 1 of a record: bits 0..2 the state, bits 2..28 the value length, bit 28 whether
/// a version word follows, bits 29..32 unused (written as zero), bits 32..64 the back
/// reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordWord1 {
    /// `STATE_LIVE`, `STATE_DEAD` or `STATE_PAD` (2 bits; 0 is no record).
    pub state: u64,
    /// Bytes of the value (26 bits).
    pub value_len: usize,
    /// Whether word 2 of the record is its version.
    pub versioned: bool,
    /// The index slot that points at the record (32 bits).
    pub back_ref: usize,
}

impl RecordWord1 {
    const STATE_MASK: u64 = 3;
    const VERSIONED: u64 = 1 << 28;
    const LOW_HALF: u64 = 0xffff_ffff;
    /// Largest value length the word holds.
    pub(crate) const MAX_VALUE_LEN: usize = (1 << 26) - 1;
    /// Word 1 of a pad record.
    pub(crate) const PAD: RecordWord1 = RecordWord1 {
        state: STATE_PAD,
        value_len: 0,
        versioned: false,
        back_ref: 0,
    };

    #[inline]
    pub(crate) const fn encode(self) -> u64 {
        (self.state & Self::STATE_MASK)
            | ((self.value_len as u64 & Self::MAX_VALUE_LEN as u64) << 2)
            | if self.versioned { Self::VERSIONED } else { 0 }
            | ((self.back_ref as u64) << 32)
    }

    #[inline]
    pub(crate) const fn decode(w: u64) -> RecordWord1 {
        RecordWord1 {
            state: w & Self::STATE_MASK,
            value_len: ((w >> 2) & Self::MAX_VALUE_LEN as u64) as usize,
            versioned: w & Self::VERSIONED != 0,
            back_ref: (w >> 32) as usize,
        }
    }

    /// A stored word with its state replaced and every other bit kept (the unused bits
    /// included, so a record is rewritten exactly as it was but for the state).
    #[inline]
    pub(crate) const fn with_state(w: u64, state: u64) -> u64 {
        (w & !Self::STATE_MASK) | (state & Self::STATE_MASK)
    }

    /// A stored word with its back reference replaced and every other bit kept.
    #[inline]
    pub(crate) const fn with_back_ref(w: u64, back_ref: usize) -> u64 {
        (w & Self::LOW_HALF) | ((back_ref as u64) << 32)
    }
}

/// The intent record: bits 0..8 the operation in flight (`INTENT_*`), bits 32..64 the
/// slot of the entry it works on; the word 0 when no operation is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Intent {
    /// `INTENT_*` (8 bits).
    pub op: u64,
    /// The index slot of the entry in flight (32 bits).
    pub slot: usize,
}

impl Intent {
    const OP_MASK: u64 = 0xff;
    /// No operation in flight.
    pub(crate) const NONE: Intent = Intent {
        op: INTENT_NONE,
        slot: 0,
    };

    #[inline]
    pub(crate) const fn encode(self) -> u64 {
        (self.op & Self::OP_MASK) | ((self.slot as u64) << 32)
    }

    #[inline]
    pub(crate) const fn decode(w: u64) -> Intent {
        Intent {
            op: w & Self::OP_MASK,
            slot: (w >> 32) as usize,
        }
    }
}

// The limits the file format promises fit in their fields.
const _: () = assert!(MAX_KEY_LIMIT <= RecordWord0::MAX_KEY_LEN);
const _: () = assert!(MAX_VALUE_LIMIT == RecordWord1::MAX_VALUE_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{
        INTENT_CLEAR, INTENT_EVICT, INTENT_MOVE, INTENT_OVERWRITE, INTENT_REMOVE, INTENT_SET,
        INTENT_TOUCH, STATE_DEAD, STATE_LIVE,
    };
    use proptest::prelude::*;

    /// Words that exercise every field boundary.
    const EDGES: [u64; 12] = [
        0,
        1,
        u64::MAX,
        0xffff,
        0x1_0000,
        0xffff_ffff,
        0x1_0000_0000,
        0xffff_ffff_0000_0000,
        0x0000_ffff_ffff_0000,
        0xf000_0000,
        0x5555_5555_5555_5555,
        0xaaaa_aaaa_aaaa_aaaa,
    ];

    #[test]
    fn slot_word_round_trips_at_its_extremes() {
        for loc in [0, 1, u32::MAX] {
            for tag in [0, 1, u32::MAX] {
                let w = SlotWord { loc, tag };
                assert_eq!(SlotWord::decode(w.encode()), w);
                assert_eq!(w.is_empty(), w.encode() == 0);
            }
        }
        assert_eq!(SlotWord::EMPTY.encode(), 0);
        assert!(SlotWord::decode(0).is_empty());
        assert!(!SlotWord::decode(1 << 32).is_empty());
        assert_eq!(
            SlotWord { loc: 7, tag: 9 }.encode(),
            (9 << 32) | 7,
            "the byte map's layout"
        );
    }

    #[test]
    fn log_state_round_trips_at_its_extremes() {
        for head in [0, 1, u32::MAX] {
            for tail in [0, 1, u32::MAX] {
                let s = LogState { head, tail };
                assert_eq!(LogState::decode(s.encode()), s);
                assert_eq!(
                    LogState::from_bytes(s.head_bytes(), s.tail_bytes()),
                    s,
                    "bytes"
                );
            }
        }
        let s = LogState::from_bytes(16, 4096);
        assert_eq!((s.head_bytes(), s.tail_bytes()), (16, 4096));
        assert_eq!(s.encode(), 2 | (512 << 32), "the byte map's layout");
    }

    #[test]
    fn record_words_round_trip_at_their_extremes() {
        for key_len in [0, 1, RecordWord0::MAX_KEY_LEN] {
            for expire in [0, 1, RecordWord0::MAX_EXPIRE] {
                let w = RecordWord0 { key_len, expire };
                assert_eq!(RecordWord0::decode(w.encode()), w);
            }
        }
        for state in [0, STATE_LIVE, STATE_DEAD, STATE_PAD] {
            for value_len in [0, 1, RecordWord1::MAX_VALUE_LEN] {
                for back_ref in [0, 1, u32::MAX as usize] {
                    for versioned in [false, true] {
                        let w = RecordWord1 {
                            state,
                            value_len,
                            versioned,
                            back_ref,
                        };
                        assert_eq!(RecordWord1::decode(w.encode()), w);
                    }
                }
            }
        }
        // The byte map's layout, and fields too wide for their bits are cut to them.
        assert_eq!(
            RecordWord0 {
                key_len: 5,
                expire: 3
            }
            .encode(),
            5 | (3 << 16)
        );
        assert_eq!(
            RecordWord0 {
                key_len: 0x1_0005,
                expire: u64::MAX
            }
            .encode(),
            5 | (u64::MAX << 16)
        );
        assert_eq!(
            RecordWord1 {
                state: STATE_LIVE,
                value_len: 5,
                versioned: false,
                back_ref: 7
            }
            .encode(),
            1 | (5 << 2) | (7 << 32)
        );
        assert_eq!(
            RecordWord1 {
                state: STATE_LIVE,
                value_len: 5,
                versioned: true,
                back_ref: 7
            }
            .encode(),
            1 | (5 << 2) | (1 << 28) | (7 << 32)
        );
        assert_eq!(
            RecordWord1 {
                state: 4 | STATE_DEAD,
                value_len: RecordWord1::MAX_VALUE_LEN + 2,
                versioned: false,
                back_ref: 7
            }
            .encode(),
            STATE_DEAD | (1 << 2) | (7 << 32)
        );
        assert_eq!(RecordWord0::PAD.encode(), 0);
        assert_eq!(RecordWord1::PAD.encode(), STATE_PAD);
    }

    #[test]
    fn intent_round_trips_at_its_extremes() {
        let ops = [
            INTENT_NONE,
            INTENT_SET,
            INTENT_REMOVE,
            INTENT_TOUCH,
            INTENT_MOVE,
            INTENT_EVICT,
            INTENT_CLEAR,
            INTENT_OVERWRITE,
            0xff,
        ];
        for op in ops {
            for slot in [0, 1, u32::MAX as usize] {
                let i = Intent { op, slot };
                assert_eq!(Intent::decode(i.encode()), i);
            }
        }
        assert_eq!(Intent::NONE.encode(), 0);
        assert_eq!(
            Intent {
                op: INTENT_MOVE,
                slot: 9
            }
            .encode(),
            INTENT_MOVE | (9 << 32)
        );
    }

    /// Decodes `w` with every codec, and checks that re-encoding keeps every bit the
    /// word defines (all of them but the unused bits of record word 1 and the intent).
    fn check_any_word(w: u64) {
        assert_eq!(SlotWord::decode(w).encode(), w);
        assert_eq!(SlotWord::decode(w).is_empty(), w == 0);
        assert_eq!(LogState::decode(w).encode(), w);
        assert_eq!(RecordWord0::decode(w).encode(), w);
        let r1 = RecordWord1::decode(w);
        assert_eq!(r1.encode(), w & !(0x7 << 29));
        assert!(r1.state <= 3 && r1.value_len <= RecordWord1::MAX_VALUE_LEN);
        assert_eq!(RecordWord1::with_state(w, r1.state), w);
        assert_eq!(RecordWord1::with_back_ref(w, r1.back_ref), w);
        assert_eq!(
            RecordWord1::decode(RecordWord1::with_state(w, STATE_DEAD)),
            RecordWord1 {
                state: STATE_DEAD,
                ..r1
            }
        );
        assert_eq!(
            RecordWord1::decode(RecordWord1::with_back_ref(w, 3)),
            RecordWord1 { back_ref: 3, ..r1 }
        );
        let i = Intent::decode(w);
        assert_eq!(i.encode(), w & !(0xff_ffff << 8));
        assert!(i.op <= 0xff);
    }

    #[test]
    fn decoding_edge_words_never_panics() {
        for w in EDGES {
            check_any_word(w);
            check_any_word(!w);
            check_any_word(w.rotate_left(13));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 16 } else { 4096 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn decoding_any_word_never_panics(w in any::<u64>()) {
            check_any_word(w);
        }
    }
}
