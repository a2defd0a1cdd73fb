//! Inputs the fuzz targets (fuzz/, run with `cargo +nightly fuzz run <target>`) found,
//! replayed through the same harness code on the stable toolchain. Each test names the
//! target and what went wrong; one whose bug is still open is `#[ignore = "bug: ..."]`
//! until it is fixed.
//!
//! The harness files are shared with the fuzz crate. They reach the library's table
//! through `larder::table`, public only under `cfg(fuzzing)`, so this file compiles only
//! with that cfg set (`.ci/test` runs it so, in a debug build with overflow checks:
//! `RUSTFLAGS="--cfg fuzzing" cargo test --all-features --test fuzz_regressions`); in
//! other builds it is empty. Not every harness item is used here.
#![cfg(fuzzing)]
#![allow(dead_code)]

#[path = "../fuzz/src/hostile.rs"]
mod hostile;
#[path = "../fuzz/src/image.rs"]
mod image;
#[path = "../fuzz/src/table.rs"]
mod table;

use hostile::{Area, Door, FileOp, HostileInput, Write};
use image::How;
use table::{Op, OpsInput, ScribbleInput, ScribbleOp};

/// The header page of a real cache file with `(capacity, max_key_len, max_value_len)`.
fn real_header(capacity: u64, max_key: usize, max_value: usize) -> Vec<u8> {
    let opts = larder::Options::new()
        .capacity(capacity)
        .max_key_len(max_key)
        .max_value_len(max_value);
    image::create_image(&opts, |_| {})[..image::PAGE].to_vec()
}

// ----- the harnesses themselves work on stable --------------------------------------

#[test]
fn harnesses_run_clean_inputs() {
    hostile::run_header(&real_header(94_208, 40, 2_000));
    for config in 0..table::CONFIGS.len() as u8 {
        let ops = (0..200u16)
            .map(|i| match i % 50 {
                // Small values fill index buckets, large ones the logs.
                10 => Op::SetMany {
                    first: i as u8,
                    count: 64,
                    len: 3,
                },
                30 => Op::SetMany {
                    first: i as u8,
                    count: 60,
                    len: 280,
                },
                // Counters: new ones, increments of them, and increments of values that
                // are not counters; replaces of present and absent keys.
                7 | 17 | 27 | 37 | 47 => Op::Incr {
                    key: (i % 9) as u8,
                    delta: (i as i16) - 100,
                },
                8 | 18 | 28 => Op::Replace {
                    key: (i * 37 % 251) as u8,
                    len: i * 3,
                    ttl: (i % 4 == 0).then_some(i),
                },
                // Versions: read (giving an entry one), compare-and-swap with the
                // version just read, with an older one, and with one never given out.
                9 | 19 | 29 | 39 => Op::GetVersioned {
                    key: (i * 37 % 251) as u8,
                },
                11 | 21 | 31 | 41 => Op::SetIfVersion {
                    key: ((i - 2) * 37 % 251) as u8,
                    len: i * 5,
                    ttl: (i % 3 == 0).then_some(i),
                    stale: (i % 20 == 1).then_some((i / 7) as u8),
                },
                // Tickets: stored two operations later (an advance between), stored
                // with no ticket of the key (an error), and taken just before a set of
                // the key (then refused); a clear now and then.
                12 | 32 => Op::Ticket {
                    key: (i * 37 % 251) as u8,
                },
                14 | 34 | 44 => Op::SetWithTicket {
                    key: ((i - 2) * 37 % 251) as u8,
                    len: i * 3,
                },
                24 => Op::Ticket {
                    key: ((i + 1) * 37 % 251) as u8,
                },
                26 => Op::SetWithTicket {
                    key: ((i - 1) * 37 % 251) as u8,
                    len: i,
                },
                49 => Op::Clear,
                _ => match i % 5 {
                    0 | 1 => Op::Set {
                        key: (i * 37 % 251) as u8,
                        len: i * 7,
                        ttl: (i % 3 == 0).then_some(i),
                    },
                    2 => Op::Get {
                        key: (i * 11 % 251) as u8,
                    },
                    3 => Op::Advance { ms: 40 },
                    _ => Op::Remove {
                        key: (i * 13 % 251) as u8,
                    },
                },
            })
            .collect();
        table::run_ops(&OpsInput { config, ops });
    }
    table::run_scribble(&ScribbleInput {
        config: 1,
        ops: vec![
            ScribbleOp::Op(Op::Set {
                key: 1,
                len: 10,
                ttl: None,
            }),
            ScribbleOp::Op(Op::Die {
                shard: 0,
                op: 7,
                slot: 3,
            }),
            ScribbleOp::Op(Op::Get { key: 1 }),
            ScribbleOp::Poke {
                shard: 0,
                word: 9,
                how: How::Set(u64::MAX),
            },
            ScribbleOp::Op(Op::Get { key: 1 }),
        ],
    });
    for door in [Door::Checksummed, Door::AsWritten] {
        for image in 0..3 {
            hostile::run_hostile(
                &HostileInput {
                    image,
                    // A lost index slot: repair finds the entry again in the logs.
                    writes: vec![Write {
                        area: Area::Index,
                        shard: 0,
                        at: 3,
                        how: How::Zero,
                    }],
                    ops: vec![
                        FileOp::Get { key: 3 },
                        FileOp::Set {
                            key: 4,
                            len: 100,
                            ttl: None,
                        },
                        FileOp::Entries,
                        FileOp::Stats,
                    ],
                },
                door,
            );
        }
    }
}

/// `ops`, written by hand: stores with a ticket after each kind of revocation of their
/// key (refused, also with 64 revocations of other keys after it, which the ring no
/// longer holds), after 63 revocations of other keys (stored: the ring still holds
/// every one) and after 64 (either), and with another key's ticket (an error).
#[test]
fn ticket_stores_follow_the_revocations_of_their_key() {
    let set = |key| Op::Set {
        key,
        len: 10,
        ttl: None,
    };
    let revocations = [
        set(1),
        Op::Remove { key: 1 },
        Op::Remove { key: 1 }, // finds nothing
        Op::InsertIfAbsent {
            key: 1,
            len: 3,
            ttl: None,
        },
        Op::InsertIfAbsent {
            key: 1,
            len: 4,
            ttl: None,
        }, // finds an entry
        Op::Replace {
            key: 1,
            len: 5,
            ttl: None,
        },
        Op::Incr { key: 1, delta: 1 }, // not a counter
        Op::SetIfVersion {
            key: 1,
            len: 6,
            ttl: None,
            stale: None,
        },
        Op::Clear,
        Op::Replace {
            key: 1,
            len: 7,
            ttl: None,
        }, // finds nothing
    ];
    let others = |n: u8| (0..n).map(|i| Op::Remove { key: 100 + i });
    let mut ops = vec![set(1), Op::GetVersioned { key: 1 }];
    for revocation in revocations {
        ops.extend([
            Op::GetVersioned { key: 1 },
            Op::Ticket { key: 1 },
            revocation,
            Op::SetWithTicket { key: 1, len: 20 },
            Op::Get { key: 1 },
        ]);
    }
    ops.extend([set(2), Op::Ticket { key: 2 }]);
    ops.extend(others(63));
    ops.extend([Op::SetWithTicket { key: 2, len: 30 }, Op::Get { key: 2 }]);
    ops.extend([set(5), Op::Ticket { key: 5 }, Op::Remove { key: 5 }]);
    ops.extend(others(64));
    ops.extend([Op::SetWithTicket { key: 5, len: 30 }, Op::Get { key: 5 }]);
    ops.push(Op::Ticket { key: 3 });
    ops.extend(others(64));
    ops.extend([
        Op::SetWithTicket { key: 3, len: 30 },
        Op::Get { key: 3 },
        Op::SetWithTicket { key: 4, len: 5 },
        Op::Get { key: 4 },
    ]);
    for config in 0..table::CONFIGS.len() as u8 {
        table::run_ops(&OpsInput {
            config,
            ops: ops.clone(),
        });
    }
}

// ----- header ------------------------------------------------------------------------

/// `header`: a header with a right checksum whose capacity (2^47 + 72 KiB) times its
/// expected entry size (~2^24) overflows `usize` in `Geometry::compute`
/// (`room * p.expected_entry`): a panic in builds with overflow checks, wrapped
/// arithmetic otherwise. It must be a clean error.
#[test]
fn header_with_huge_capacity_and_entry_size_is_an_error_not_an_overflow() {
    let mut h = real_header(94_208, 40, 2_000);
    image::put(&mut h, 3 * 8, 0x8000_0001_2000); // capacity
    image::put(&mut h, 12 * 8, 16_776_895); // expected_entry
    hostile::run_header(&h);
    image::fix_checksum(&mut h);
    assert!(larder::table::check_header(&h).is_err());
}

// ----- hostile_file -----------------------------------------------------------------

/// `hostile_file`: a statistics counter near `u64::MAX` (slot 2's hits; the image's own
/// process counted in slot 1) makes `Cache::stats` overflow while summing the slots
/// (`s.hits += ...`, src/cache.rs); the per-shard counters are summed the same way.
/// Counters come from the file: they must be summed with wrapping (or saturating)
/// arithmetic.
#[test]
fn stats_with_a_huge_counter_does_not_overflow() {
    for (area, at) in [(Area::Stats, 2), (Area::ShardHeader, 4)] {
        hostile::run_hostile(
            &HostileInput {
                image: 0,
                writes: vec![
                    Write {
                        area,
                        shard: 0,
                        at,
                        how: How::Set(u64::MAX),
                    },
                    Write {
                        area,
                        shard: 1,
                        at,
                        how: How::Set(u64::MAX),
                    },
                ],
                ops: vec![FileOp::Stats],
            },
            Door::Checksummed,
        );
    }
}

/// `hostile_file`: a record's key length word zeroed (the first word of shard 0's main
/// log in image 0; the small log in image 1 gives the same), so its key is now the empty
/// key, which hashes to the other shard. `Shard::repair` re-indexes the record in the
/// shard it sits in, and `verify` then calls that shard clean, yet no get or remove can
/// reach the entry (they look in the key's own shard) while `entries()` lists it: an
/// entry nobody can read or remove, and a listing that disagrees with reads. Repair must
/// drop a record whose key belongs to another shard, and verify must report one.
#[test]
fn repair_drops_a_record_whose_key_belongs_to_another_shard() {
    for (image, area) in [(0, Area::MainLog), (1, Area::SmallLog)] {
        hostile::run_hostile(
            &HostileInput {
                image,
                writes: vec![Write {
                    area,
                    shard: 0,
                    at: 0,
                    how: How::Set(0),
                }],
                ops: vec![],
            },
            Door::Checksummed,
        );
    }
}
